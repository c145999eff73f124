"""The ``nst-batch`` flow: validate, plan, fan out, collect, report.

Every parameter is a JSON value, so a deployment can schedule the flow and
pass them from the Prefect UI.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.futures import as_completed
from prefect.states import Failed

from flows.manifest import Manifest, ManifestError, folder_manifest, load_manifest
from flows.plan import OutputLock, OutputLockedError, Plan, PlannedPair, default_output_dir, make_plan, remove_stale_temporaries
from flows.progress import RunProgress
from flows.report import PairRecord, ReportWriter, publish_artifacts
from flows.tasks import PairFailedError, PairJob, run_pair
from flows.workers import make_task_runner, plan_cluster, shared_api_settings, start_task_runner

__all__ = ["BatchFailedError", "load_batch", "run_batch", "resolve_weights"]

logger = logging.getLogger(__name__)

PairListener = Callable[[PairRecord], None]


class BatchFailedError(RuntimeError):
    """Error of a batch in which at least one pair failed, after every other pair ran.

    Attributes:
        summary: The batch summary, as returned by `run_batch` on success.
    """

    def __init__(self, summary: dict[str, Any]) -> None:
        self.summary = summary
        super().__init__(
            f"{summary['failed']} of {summary['pairs']} pairs failed; see the error column of {summary['report']}"
        )

    def __reduce__(self):
        return type(self), (self.summary,)


def resolve_weights(weights: str) -> str:
    """Return ``weights`` with a local file made absolute, so that every worker finds it."""
    path = Path(weights).expanduser()
    if path.exists():
        return str(path.resolve())
    return weights


def load_batch(
    manifest: str | None = None,
    content_dir: str | None = None,
    style_dir: str | None = None,
    *,
    content_glob: str | None = None,
    style_glob: str | None = None,
    defaults: dict[str, Any] | None = None,
    output_dir: str | None = None,
    weights: str = "IMAGENET1K_V1",
    force: bool = False,
) -> tuple[Manifest, Plan]:
    """Load a manifest (or two folders) and plan its outputs, without raising for problems.

    Returns:
        The manifest and the plan; their ``problems`` lists hold every problem found.

    Raises:
        ValueError: If neither a manifest nor both folders are given, or both are.
        ManifestError: If the manifest file cannot be read at all.
    """
    if manifest is not None and (content_dir is not None or style_dir is not None):
        raise ValueError("Give either a manifest or content_dir and style_dir, not both")
    if manifest is not None:
        loaded = load_manifest(manifest, defaults=defaults)
    elif content_dir is not None and style_dir is not None:
        loaded = folder_manifest(
            content_dir, style_dir, content_glob=content_glob, style_glob=style_glob, defaults=defaults
        )
    else:
        raise ValueError("Give a manifest file, or both content_dir and style_dir for folder mode")

    target = Path(output_dir) if output_dir is not None else default_output_dir(loaded)
    identity, weights_problem = _check_weights(weights)
    plan = make_plan(loaded, target, weights_identity=identity, force=force)
    if weights_problem is not None:
        plan.problems.insert(0, weights_problem)
    if target.exists() and not target.is_dir():
        plan.problems.insert(0, f"output folder '{target}' is a file. Choose a folder with --output-dir")
    elif target.is_dir() and not os.access(target, os.W_OK):
        plan.problems.insert(0, f"output folder '{target}' is not writable. Choose another --output-dir")
    inputs = {path.resolve() for pair in plan.pairs for path in (pair.content, pair.style)}
    for pair in plan.pairs:
        if pair.output.resolve() in inputs:
            plan.problems.append(
                f"{pair.location}: output '{pair.output}' is also an input image of the batch, and writing it "
                "would replace that image. Choose another output name or --output-dir"
            )
    for location, folder in loaded.image_folders:
        if target.resolve() == folder:
            plan.problems.insert(
                0,
                f"{location}: output folder '{target}' is also an image folder of the batch, so each run would "
                "stylise the results of the last one. Choose another --output-dir",
            )
    return loaded, plan


def _check_weights(weights: str) -> tuple[str, str | None]:
    """Load the weights once, before any pair runs, and return their identity and any problem.

    A missing or broken weights file would otherwise fail every pair of the
    batch, one by one. Loading here also downloads torchvision's checkpoint
    into the cache once, instead of once per worker.
    """
    from nst_core import WeightsError, load_features_state_dict, weights_id

    try:
        load_features_state_dict(weights)
        return weights_id(weights), None
    except (WeightsError, ValueError) as error:
        return f"unusable:{weights}", f"weights: {error}"


@flow(name="nst-batch", validate_parameters=True)
def run_batch(
    manifest: str | None = None,
    output_dir: str | None = None,
    devices: list[str] | None = None,
    workers: int | None = None,
    cluster: str | None = None,
    weights: str | None = "IMAGENET1K_V1",
    force: bool = False,
    content_dir: str | None = None,
    style_dir: str | None = None,
    content_glob: str | None = None,
    style_glob: str | None = None,
    defaults: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Stylise every pair of a manifest, or every content image with every style image.

    Pairs whose output was made earlier with the same settings are skipped.
    A failing pair is reported and the others go on.

    Args:
        manifest: YAML or CSV manifest. Leave out for folder mode.
        output_dir: Folder for the images and ``report.csv``. Defaults to
            ``outputs/`` beside the manifest, or in the working directory in
            folder mode.
        devices: Devices of the local workers, one worker each, such as
            ``["cuda:0", "cuda:2"]``. Defaults to every visible GPU, or the CPU.
        workers: Number of CPU worker processes when there is no GPU. Defaults to 1.
        cluster: ``tcp://HOST:PORT`` of a running Dask scheduler to use instead
            of a local cluster.
        weights: ``"IMAGENET1K_V1"``, ``"random"`` or a ``.pth`` file. Defaults
            to ``"IMAGENET1K_V1"``.
        force: Run every pair, even those already done. Defaults to False.
        content_dir: Folder of content images, for folder mode.
        style_dir: Folder of style images, for folder mode.
        content_glob: Pattern selecting the content files, such as ``*.jpg``.
        style_glob: Pattern selecting the style files.
        defaults: Transfer settings for every pair, such as ``{"size": 256}``.
            They replace the manifest's ``defaults:``; a pair's own values win.

    Returns:
        Counts of the pairs (``pairs``, ``done``, ``skipped``, ``failed``), the
        wall time in seconds, and the paths of the output folder and report.

    Raises:
        ManifestError: If the manifest has problems; nothing runs.
        BatchFailedError: If any pair failed, after every pair has run. The
            flow run ends Failed with this error as its result.
    """
    run_logger = get_run_logger()
    started = time.perf_counter()
    weights = resolve_weights(weights or "IMAGENET1K_V1")

    loaded, plan = load_batch(
        manifest,
        content_dir,
        style_dir,
        content_glob=content_glob,
        style_glob=style_glob,
        defaults=defaults,
        output_dir=output_dir,
        weights=weights,
        force=force,
    )
    problems = loaded.problems + plan.problems
    if problems:
        raise ManifestError(loaded.name, problems)
    cluster_plan = plan_cluster(devices, workers, cluster)

    try:
        lock = OutputLock(plan.output_dir).acquire()
    except OutputLockedError as error:
        # The message names the running batch, so a traceback would add nothing.
        run_logger.error("%s", error)
        return Failed(message=str(error), data=error)
    with lock, ReportWriter(plan.output_dir / "report.csv") as report:
        for path in remove_stale_temporaries(plan):
            run_logger.warning("Removed %s, left by an interrupted run", path)
        skipped = [_skipped_record(pair) for pair in plan.to_skip]
        report.start(skipped)
        records: list[PairRecord] = list(skipped)
        listeners = _pair_listeners(report, records, run_logger)
        progress = RunProgress(len(plan.pairs))
        progress.pairs_skipped(len(skipped))
        listeners.append(lambda record: progress.pair_finished(record.pair_id, record.status))
        run_logger.info(
            "Planned %d pairs from %s: %d to run, %d already done; output folder %s",
            len(plan.pairs), loaded.name, len(plan.to_run), len(skipped), plan.output_dir,
        )

        if plan.to_run:
            run_logger.info("Starting %s", cluster_plan.describe())
            with shared_api_settings(), make_task_runner(cluster_plan) as runner:
                start_task_runner(runner, cluster_plan)
                jobs = {}
                for pair in plan.to_run:
                    job = PairJob.from_planned(pair, plan.output_dir, weights)
                    jobs[runner.submit(run_pair, {"job": job})] = job
                for future in as_completed(list(jobs)):
                    record = _collect(future, jobs[future], run_logger)
                    _notify(listeners, record, run_logger)

    elapsed = time.perf_counter() - started
    publish_artifacts(records, elapsed, plan.output_dir)
    contact_sheet = _build_review(plan.output_dir, run_logger)
    progress.finish(contact_sheet or plan.output_dir / "report.csv")
    counts = Counter(record.status for record in records)
    summary = {
        "pairs": len(records),
        "done": counts["done"],
        "skipped": counts["skipped"],
        "failed": counts["failed"],
        "seconds": round(elapsed, 3),
        "output_dir": str(plan.output_dir),
        "report": str(plan.output_dir / "report.csv"),
    }
    run_logger.info(
        "Finished %d pairs in %.1f s: %d done, %d skipped, %d failed",
        summary["pairs"], elapsed, summary["done"], summary["skipped"], summary["failed"],
    )
    if summary["failed"]:
        # Return a Failed state instead of raising, because each failure is
        # logged already and the engine would add a traceback of this summary.
        error = BatchFailedError(summary)
        return Failed(message=str(error), data=error)
    return summary


def _pair_listeners(report: ReportWriter, records: list[PairRecord], run_logger: Any) -> list[PairListener]:
    """Return the functions called with each finished pair's record, in order.

    The report row is written first, so that a later listener that fails
    cannot lose it.
    """

    def log_pair(record: PairRecord) -> None:
        if record.status == "failed":
            run_logger.error("failed %s: %s", record.pair_id, record.error)
        else:
            run_logger.info(
                "done %s in %.1f s on %s (%s)", record.pair_id, record.total_seconds or 0.0, record.device, record.worker
            )

    return [report.add, records.append, log_pair]


def _notify(listeners: list[PairListener], record: PairRecord, run_logger: Any) -> None:
    # One failing listener, such as the progress display, must not stop the
    # batch or keep the other listeners from seeing the pair.
    for listener in listeners:
        try:
            listener(record)
        except Exception as error:
            run_logger.error(
                "Handling the result of pair %s failed in %r: %s", record.pair_id, listener, error, exc_info=True
            )


def _collect(future: Any, job: PairJob, run_logger: Any) -> PairRecord:
    try:
        return future.result()
    except PairFailedError as error:
        return error.record
    except Exception as error:
        # The worker process died or the task crashed before it could build its row.
        run_logger.error("Pair %s crashed: %s", job.pair_id, error, exc_info=True)
        record = job.base_record("failed")
        record.error = f"{type(error).__name__}: {error}"
        record.finished_at = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        return record


def _build_review(output_dir: Path, run_logger: Any) -> Path | None:
    """Build the contact sheet and loss plots, returning the sheet's path.

    A failure is logged, not raised, because every pair's row is on disk
    already and ``nst report`` can build the review again.
    """
    from flows.review import build_review

    try:
        review = build_review(output_dir)
    except Exception as error:
        run_logger.error("Cannot build the contact sheet in %s: %s", output_dir, error, exc_info=True)
        return None
    for message in review.warning_summary():
        run_logger.warning("Contact sheet: %s", message)
    run_logger.info("Contact sheet: %s", review.html)
    return review.html


def _skipped_record(pair: PlannedPair) -> PairRecord:
    previous = pair.previous or {}
    return PairRecord.from_row(
        previous,
        pair_id=pair.pair_id,
        content=str(pair.content),
        style=str(pair.style),
        output=str(pair.output),
        status="skipped",
        error="",
        settings_hash=pair.settings_hash,
        seed=pair.settings.seed,
    )
