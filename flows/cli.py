"""The ``nst`` command.

Each subcommand has an ``_add_<name>_parser`` function that declares its
options and a ``_run_<name>`` function that runs it and returns the exit code.

Exit codes of ``nst run``: 0 when every pair is done or skipped, 1 when any
pair failed (or the run could not start), 2 for an invalid manifest or option.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main", "EXIT_OK", "EXIT_FAILED", "EXIT_INVALID"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INVALID = 2

#: Prefect settings that send usage data over the network, turned off unless
#: the user sets them. ``DO_NOT_TRACK`` turns off the client-side analytics of
#: Prefect 3.x; ``PREFECT_SERVER_ANALYTICS_ENABLED`` those of the embedded server.
_OFFLINE_DEFAULTS = {
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_CLOUD_ENABLE_ORCHESTRATION_TELEMETRY": "false",
}

#: Prefect waits 20 s (its default) for the temporary server to start. The
#: Dask workers start at the same time, and on a busy two-core machine the
#: server has been measured to need longer, so the CLI allows 120 s unless set.
_SERVER_DEFAULTS = {"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``nst`` command with ``argv`` (defaults to ``sys.argv[1:]``) and return the exit code."""
    for name, value in {**_OFFLINE_DEFAULTS, **_SERVER_DEFAULTS}.items():
        os.environ.setdefault(name, value)
    if threading.current_thread() is threading.main_thread():
        # SIGTERM (systemd, cron timeouts, kill) ends the run like Ctrl-C, so
        # that context managers and exit handlers stop the workers and
        # Prefect's temporary server instead of leaving them running.
        signal.signal(signal.SIGTERM, _exit_on_signal)

    parser = argparse.ArgumentParser(prog="nst", description="Batch neural style transfer with MobileNetV2.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_transfer_parser(subparsers)
    _add_run_parser(subparsers)
    _add_validate_parser(subparsers)
    _add_report_parser(subparsers)
    _add_schedule_parser(subparsers)
    args = parser.parse_args(argv)
    return args.handler(args)


def _exit_on_signal(number: int, frame: object) -> None:
    raise SystemExit(128 + number)


# --- shared options ---------------------------------------------------------


def _add_manifest_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("manifest", nargs="?", help="YAML or CSV manifest of content/style pairs")
    parser.add_argument("--content-dir", help="folder of content images: every one is paired with every style image")
    parser.add_argument("--style-dir", help="folder of style images, for --content-dir")
    parser.add_argument("--content-glob", help="pattern selecting the content files, such as '*.jpg'")
    parser.add_argument("--style-glob", help="pattern selecting the style files")
    parser.add_argument(
        "--output-dir",
        help="folder for the images and report.csv (default: outputs/ beside the manifest, "
        "or ./outputs with --content-dir)",
    )
    parser.add_argument(
        "--weights",
        default="IMAGENET1K_V1",
        help="MobileNetV2 weights: IMAGENET1K_V1, random, or a .pth file (default: IMAGENET1K_V1)",
    )
    parser.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="transfer setting for every pair, such as --set size=256 --set steps=100; replaces the "
        "manifest's defaults, while a pair's own values win (repeatable)",
    )
    parser.add_argument("--force", action="store_true", help="run every pair, even those already done")


def _check_manifest_arguments(parser_name: str, args: argparse.Namespace) -> str | None:
    folders = args.content_dir is not None or args.style_dir is not None
    if args.manifest is not None and folders:
        return f"nst {parser_name}: give either MANIFEST or --content-dir/--style-dir, not both"
    if args.manifest is None and not (args.content_dir and args.style_dir):
        return f"nst {parser_name}: give a MANIFEST file, or both --content-dir and --style-dir"
    return None


def _parse_settings(items: Sequence[str]) -> dict[str, str]:
    settings = {}
    for item in items:
        name, separator, value = item.partition("=")
        if not separator or not name.strip():
            raise ValueError(f"Invalid --set '{item}'. Use NAME=VALUE, such as --set size=256")
        settings[name.strip()] = value.strip()
    return settings


def _load(args: argparse.Namespace):
    from flows.batch import load_batch, resolve_weights

    weights = resolve_weights(args.weights)
    return load_batch(
        args.manifest,
        args.content_dir,
        args.style_dir,
        content_glob=args.content_glob,
        style_glob=args.style_glob,
        defaults=_parse_settings(args.settings) or None,
        output_dir=args.output_dir,
        weights=weights,
        force=args.force,
    )


def _parse_devices(text: str | None) -> list[str] | None:
    """Split a comma-separated ``--devices`` value, or return ``None`` when it is not given."""
    if not text:
        return None
    return [item.strip() for item in text.split(",") if item.strip()]


def _print_problems(problems: Sequence[str], source: str) -> None:
    print(f"{source}: {len(problems)} problems, nothing was run:", file=sys.stderr)
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)


# --- nst transfer -----------------------------------------------------------


def _add_transfer_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "transfer",
        help="stylise one content image with one style image",
        description="Stylise one pair in this process and print its final losses. Progress goes to stderr. "
        "Exits 1 when the pair fails, 2 for an invalid option.",
    )
    parser.add_argument("content", help="content image: any format Pillow reads")
    parser.add_argument("style", help="style image")
    parser.add_argument("-o", "--output", required=True, help="where to write the result (.png or .jpg)")
    parser.add_argument("--size", type=int, help="longest side of the result in pixels (default: 512)")
    parser.add_argument("--style-size", type=int, help="longest side of the style image in pixels (default: --size)")
    parser.add_argument("--steps", type=int, help="optimiser steps (default: 200)")
    parser.add_argument("--content-weight", type=float, help="weight of the content loss (default: 1)")
    parser.add_argument("--style-weight", type=float, help="weight of the style loss (default: 1e5)")
    parser.add_argument("--tv-weight", type=float, help="weight of the total-variation loss (default: 0)")
    parser.add_argument("--learning-rate", type=float, help="optimiser learning rate (default: 0.01)")
    parser.add_argument("--optimizer", choices=("adam", "lbfgs"), help="optimiser (default: adam)")
    parser.add_argument("--init", choices=("content", "noise"), help="start from the content image or noise")
    parser.add_argument("--seed", type=int, help="random seed (default: 0)")
    parser.add_argument("--resize", choices=("fit", "square"), help="keep the aspect ratio (fit, default) or squash")
    parser.add_argument("--content-layers", help="MobileNetV2 feature blocks for the content loss, such as 7")
    parser.add_argument("--style-layers", help="feature blocks for the style loss, such as 4,7")
    parser.add_argument(
        "--no-normalize", dest="normalize", action="store_false", default=None,
        help="feed [0, 1] pixels to the network without ImageNet normalisation",
    )
    parser.add_argument(
        "--weights",
        default="IMAGENET1K_V1",
        help="MobileNetV2 weights: IMAGENET1K_V1, random, or a .pth file (default: IMAGENET1K_V1)",
    )
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: the first GPU, else the CPU)")
    parser.add_argument("-q", "--quiet", action="store_true", help="print no progress")
    parser.set_defaults(handler=_run_transfer)


def _run_transfer(args: argparse.Namespace) -> int:
    import torch

    from nst_core import NSTError, SettingsError, TransferSettings, transfer

    names = TransferSettings.field_names()
    given = {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
    try:
        settings = TransferSettings.from_mapping(given)
    except SettingsError as error:
        for problem in error.problems:
            print(f"nst transfer: {problem}", file=sys.stderr)
        return EXIT_INVALID
    progress = None if args.quiet else _StepProgress(sys.stderr)
    try:
        result = transfer(
            args.content, args.style, settings, weights=args.weights, device=args.device,
            output=args.output, progress=progress,
        )
    except (NSTError, ValueError, torch.OutOfMemoryError) as error:
        if progress is not None:
            progress.close()
        print(f"nst transfer: {error}", file=sys.stderr)
        # A ValueError is about the options (device, output path); the other
        # errors are about the images or the run itself.
        return EXIT_INVALID if isinstance(error, ValueError) else EXIT_FAILED
    if progress is not None:
        progress.close()
    timings = result.timings
    print(f"Wrote {result.output} ({result.width}x{result.height}) on {result.device}")
    print(
        f"content_loss {result.content_loss:.6g}  style_loss {result.style_loss:.6g}  "
        f"tv_loss {result.tv_loss:.6g}  total_loss {result.total_loss:.6g}"
    )
    print(
        f"seconds: decode {timings.decode:.2f}, features {timings.features:.2f}, "
        f"optimize {timings.optimize:.2f}, save {timings.save:.2f}"
    )
    return EXIT_OK


class _StepProgress:
    """Step counter on a stream: one rewritten line on a terminal, else a line per tenth."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self.interactive = stream.isatty()
        self.printed = 0

    def __call__(self, step: int, steps: int) -> None:
        if self.interactive:
            self.stream.write(f"\rstep {step}/{steps}")
            self.stream.flush()
        elif step == steps or step * 10 // steps > self.printed:
            self.printed = step * 10 // steps
            self.stream.write(f"step {step}/{steps}\n")
            self.stream.flush()

    def close(self) -> None:
        if self.interactive:
            self.stream.write("\n")
            self.stream.flush()


# --- nst validate -----------------------------------------------------------


def _add_validate_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "validate",
        help="check a manifest and print the plan",
        description="Check a manifest without running it: print the pairs to run, the pairs already done "
        "and every problem. Exits 2 when the manifest is invalid.",
    )
    _add_manifest_arguments(parser)
    parser.set_defaults(handler=_run_validate)


def _run_validate(args: argparse.Namespace) -> int:
    from flows.manifest import ManifestError

    usage_error = _check_manifest_arguments("validate", args)
    if usage_error:
        print(usage_error, file=sys.stderr)
        return EXIT_INVALID
    try:
        manifest, plan = _load(args)
    except (ManifestError, ValueError) as error:
        print(error, file=sys.stderr)
        return EXIT_INVALID

    print(f"Manifest: {manifest.name}")
    print(f"Output folder: {plan.output_dir}")
    for pair in plan.pairs:
        label = "run " if pair.action == "run" else "done"
        print(f"  {label}  {pair.pair_id}  ({pair.location})")
    print(f"{len(plan.to_run)} pairs to run, {len(plan.to_skip)} already done")
    problems = manifest.problems + plan.problems
    if problems:
        _print_problems(problems, manifest.name)
        return EXIT_INVALID
    return EXIT_OK


# --- nst report -------------------------------------------------------------


def _add_report_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help="rebuild the contact sheet and loss plots of a run",
        description="Rebuild report.html, loss_curves.png, thumbnails/ and curves/ in OUTPUT_DIR from its "
        "report.csv and loss histories. A last line cut off by an interrupted run is skipped with a warning, "
        "and a missing image gets a placeholder. Exits 2 when OUTPUT_DIR holds no readable report.csv.",
    )
    parser.add_argument("output_dir", metavar="OUTPUT_DIR", help="the run's output folder, which contains report.csv")
    parser.set_defaults(handler=_run_report)


def _run_report(args: argparse.Namespace) -> int:
    from flows.review import build_review

    try:
        review = build_review(args.output_dir)
    except (OSError, ValueError) as error:
        print(f"nst report: {error}", file=sys.stderr)
        return EXIT_INVALID
    for message in review.warning_summary():
        print(f"nst report: warning: {message}", file=sys.stderr)
    counts = ", ".join(f"{count} {status}" for status, count in sorted(review.counts().items()))
    print(f"{len(review.rows)} pairs ({counts or 'none'}), {len(review.flags)} loss curves flagged")
    print(f"Contact sheet: {review.html.resolve()}")
    print(f"Loss curves: {review.plot.resolve()}")
    return EXIT_OK


# --- nst run ----------------------------------------------------------------


def _add_run_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run",
        help="stylise every pair of a manifest or two folders",
        description="Stylise every pair as a Prefect flow on a Dask cluster, skipping pairs already done, "
        "and write report.csv. Exits 0 when every pair is done or skipped, 1 when any failed, 2 for an "
        "invalid manifest.",
    )
    _add_manifest_arguments(parser)
    parser.add_argument(
        "--devices",
        help="comma-separated devices, one worker each, such as cuda:0,cuda:2 (default: every visible GPU, "
        "or the CPU)",
    )
    parser.add_argument(
        "--workers", type=int, help="number of CPU worker processes when there is no GPU (default: 1)"
    )
    parser.add_argument("--cluster", help="address tcp://HOST:PORT of a running Dask scheduler to use")
    parser.set_defaults(handler=_run_run)


def _run_run(args: argparse.Namespace) -> int:
    from concurrent.futures import ThreadPoolExecutor

    from flows.manifest import ManifestError
    from flows.workers import LocalWorkers, plan_cluster

    usage_error = _check_manifest_arguments("run", args)
    if usage_error:
        print(usage_error, file=sys.stderr)
        return EXIT_INVALID
    devices = _parse_devices(args.devices)
    try:
        cluster_plan = plan_cluster(devices, args.workers, args.cluster)
    except ValueError as error:
        print(f"nst run: {error}", file=sys.stderr)
        return EXIT_INVALID
    # The local scheduler runs in this process; its INFO lines would bury the per-pair lines.
    logging.getLogger("distributed").setLevel(logging.WARNING)

    try:
        manifest, plan = _load(args)
    except (ManifestError, ValueError) as error:
        print(f"nst run: {error}", file=sys.stderr)
        return EXIT_INVALID
    problems = manifest.problems + plan.problems
    if problems:
        _print_problems(problems, manifest.name)
        return EXIT_INVALID
    # A quick look at the lock stops a second run before it spends a minute
    # starting workers and Prefect. The flow takes the lock for real.
    from flows.plan import OutputLock, OutputLockedError

    try:
        OutputLock(plan.output_dir).check()
    except OutputLockedError as error:
        print(f"nst run: {error}", file=sys.stderr)
        return EXIT_FAILED
    if cluster_plan.address is not None and plan.to_run:
        from flows.workers import check_scheduler

        try:
            check_scheduler(cluster_plan.address)
        except ValueError as error:
            print(f"nst run: {error}", file=sys.stderr)
            return EXIT_INVALID

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="nst-cluster") as pool:
        # Worker processes take seconds to import torch and Prefect, so they
        # start while Prefect starts its server in this thread.
        local = cluster_plan.address is None and bool(plan.to_run)
        starting = pool.submit(LocalWorkers(cluster_plan).start) if local else None
        workers = None
        try:
            _start_prefect_api()
            if starting is not None:
                workers = starting.result()
            address = workers.address if workers is not None else args.cluster
            return _run_flow(args, plan.output_dir, address)
        finally:
            if workers is not None:
                workers.close()
            elif starting is not None:
                starting.add_done_callback(_close_started_workers)


def _start_prefect_api() -> None:
    """Start Prefect's temporary server now, while the workers start, if no API is configured."""
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        return
    with get_client(sync_client=True) as client:
        client.api_healthcheck()


def _close_started_workers(future) -> None:
    if not future.cancelled() and future.exception() is None:
        future.result().close()


def _run_flow(args: argparse.Namespace, output_dir: Path, cluster: str) -> int:
    from flows.batch import BatchFailedError, resolve_weights, run_batch
    from flows.manifest import ManifestError

    state = run_batch(
        manifest=str(Path(args.manifest).resolve()) if args.manifest else None,
        output_dir=str(output_dir),
        cluster=cluster,
        weights=resolve_weights(args.weights),
        force=args.force,
        content_dir=str(Path(args.content_dir).resolve()) if args.content_dir else None,
        style_dir=str(Path(args.style_dir).resolve()) if args.style_dir else None,
        content_glob=args.content_glob,
        style_glob=args.style_glob,
        defaults=_parse_settings(args.settings) or None,
        return_state=True,
    )
    outcome = state.result(raise_on_failure=False)
    if isinstance(outcome, BatchFailedError):
        _print_summary(outcome.summary)
        return EXIT_FAILED
    if isinstance(outcome, ManifestError):
        _print_problems(outcome.problems, outcome.source)
        return EXIT_INVALID
    if isinstance(outcome, BaseException):
        print(f"nst run: the batch stopped: {type(outcome).__name__}: {outcome}", file=sys.stderr)
        return EXIT_FAILED
    _print_summary(outcome)
    return EXIT_OK


def _print_summary(summary: dict) -> None:
    print(
        f"{summary['pairs']} pairs: {summary['done']} done, {summary['skipped']} skipped, "
        f"{summary['failed']} failed in {summary['seconds']:.1f} s. Report: {summary['report']}"
    )


# --- nst schedule -----------------------------------------------------------


def _add_schedule_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "schedule",
        help="run a manifest on a schedule through a Prefect server",
        description="Check a manifest, then create or update the Prefect deployment nst-batch/NAME that runs "
        "it on a cron schedule. Needs a running Prefect server (PREFECT_API_URL) and a worker on the pool: "
        "'prefect worker start --pool NAME'. Exits 2 for an invalid manifest or option, or when no Prefect "
        "server responds.",
    )
    _add_manifest_arguments(parser)
    parser.add_argument("--cron", required=True, help="cron expression of the run times, such as '0 1 * * *'")
    parser.add_argument("--timezone", default="UTC", help="IANA time zone of --cron, such as Europe/Berlin (default: UTC)")
    parser.add_argument("--name", default="nightly", help="deployment name (default: nightly)")
    parser.add_argument("--pool", default="nst", help="process work pool, created when missing (default: nst)")
    parser.add_argument(
        "--devices", help="comma-separated devices of the worker machine, such as cuda:0,cuda:1 (default: every GPU)"
    )
    parser.add_argument("--workers", type=int, help="number of CPU worker processes when there is no GPU (default: 1)")
    parser.add_argument("--cluster", help="address tcp://HOST:PORT of a Dask scheduler that runs the pairs")
    parser.set_defaults(handler=_run_schedule)


def _run_schedule(args: argparse.Namespace) -> int:
    from flows.batch import resolve_weights
    from flows.manifest import ManifestError
    from flows.schedule import PrefectServerError, deploy_schedule
    from flows.workers import plan_cluster

    usage_error = _check_manifest_arguments("schedule", args)
    if usage_error:
        print(usage_error, file=sys.stderr)
        return EXIT_INVALID
    devices = _parse_devices(args.devices)
    try:
        # NOTE: --devices is checked against this machine's GPUs, which are
        # the worker's only when the worker runs on this machine.
        plan_cluster(devices, args.workers, args.cluster)
        manifest, plan = _load(args)
    except (ManifestError, ValueError) as error:
        print(f"nst schedule: {error}", file=sys.stderr)
        return EXIT_INVALID
    problems = manifest.problems + plan.problems
    if problems:
        _print_problems(problems, manifest.name)
        return EXIT_INVALID

    # Every path is absolute because the worker runs the flow in the checkout.
    parameters = {
        "manifest": str(Path(args.manifest).resolve()) if args.manifest else None,
        "content_dir": str(Path(args.content_dir).resolve()) if args.content_dir else None,
        "style_dir": str(Path(args.style_dir).resolve()) if args.style_dir else None,
        "content_glob": args.content_glob,
        "style_glob": args.style_glob,
        "output_dir": str(plan.output_dir),
        "weights": resolve_weights(args.weights),
        "defaults": _parse_settings(args.settings) or None,
        "devices": devices,
        "workers": args.workers,
        "cluster": args.cluster,
        "force": args.force or None,
    }
    parameters = {key: value for key, value in parameters.items() if value is not None}
    try:
        deployment = deploy_schedule(
            parameters, cron=args.cron, name=args.name, pool=args.pool, timezone=args.timezone
        )
    except (PrefectServerError, ValueError) as error:
        print(f"nst schedule: {error}", file=sys.stderr)
        return EXIT_INVALID

    print(f"Deployment: {deployment.name} (id {deployment.deployment_id})")
    print(f"Schedule: {deployment.cron} ({deployment.timezone})")
    print(f"Next run: {deployment.next_run.isoformat()}")
    print(f"Output folder: {plan.output_dir}")
    print(f"Work pool: {deployment.work_pool}. Start a worker with: prefect worker start --pool {deployment.work_pool}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
