"""The Prefect task that stylises one pair inside a Dask worker.

The task gets paths and settings, runs ``nst_core.transfer`` on the worker's
device, saves the image, the loss history and the done record itself, and
returns a small picklable `PairRecord`. Images, tensors and models stay in
the worker process.
"""

from __future__ import annotations

import dataclasses
import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.plan import PlannedPair, write_done_record
from flows.report import PairRecord, history_path, write_history
from flows.workers import worker_device, worker_label
from nst_core.settings import TransferSettings

__all__ = ["PairJob", "PairFailedError", "run_pair"]


@dataclasses.dataclass(frozen=True)
class PairJob:
    """Everything a worker needs to stylise one pair: paths, settings and weights.

    Attributes:
        pair_id: The output file's stem, also the task run's name.
        content: Path of the content image.
        style: Path of the style image.
        output: Path of the stylised image.
        output_dir: The batch's output folder.
        settings: The pair's transfer settings.
        settings_hash: Hash of the settings and the weights identity.
        weights: Weights specification passed to ``nst_core``.
    """

    pair_id: str
    content: str
    style: str
    output: str
    output_dir: str
    settings: TransferSettings
    settings_hash: str
    weights: str

    @classmethod
    def from_planned(cls, pair: PlannedPair, output_dir: Path, weights: str) -> PairJob:
        """Build the job of a planned pair."""
        return cls(
            pair_id=pair.pair_id,
            content=str(pair.content),
            style=str(pair.style),
            output=str(pair.output),
            output_dir=str(output_dir),
            settings=pair.settings,
            settings_hash=pair.settings_hash,
            weights=weights,
        )

    def base_record(self, status: str = "done") -> PairRecord:
        """Return the report row with only what is known before the pair runs."""
        return PairRecord(
            pair_id=self.pair_id,
            content=self.content,
            style=self.style,
            output=self.output,
            status=status,
            seed=self.settings.seed,
            settings_hash=self.settings_hash,
        )


class PairFailedError(Exception):
    """Error of a failed pair, carrying its report row so that the flow can write it.

    Attributes:
        record: The pair's report row with status ``failed`` and the error.
        retryable: Whether another attempt may succeed (out of memory).
    """

    def __init__(self, record: PairRecord, retryable: bool = False) -> None:
        self.record = record
        self.retryable = retryable
        super().__init__(record.error)

    def __reduce__(self):
        return type(self), (self.record, self.retryable)


def _retry_out_of_memory(task: Any, task_run: Any, state: Any) -> bool:
    """Retry a pair only when it ran out of memory, because other errors, such as an undecodable image, recur."""
    error = state.data
    return isinstance(error, PairFailedError) and error.retryable


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


@task(
    name="stylise-pair",
    task_run_name="{job.pair_id}",
    retries=1,
    retry_condition_fn=_retry_out_of_memory,
    cache_policy=NO_CACHE,
    persist_result=False,
)
def run_pair(job: PairJob) -> PairRecord:
    """Stylise one pair on this worker's device and save the image, history and done record.

    Raises:
        PairFailedError: With the failed report row, for any error of the pair.
    """
    import torch

    from nst_core import ImageError, transfer

    logger = get_run_logger()
    record = job.base_record()
    record.started_at = _now()
    record.device = worker_device()
    record.worker = worker_label()
    started = time.perf_counter()
    try:
        metadata = {
            "nst:settings_hash": job.settings_hash,
            "nst:settings": json.dumps(job.settings.to_dict(), sort_keys=True),
            "nst:weights": job.weights,
        }
        result = transfer(
            job.content,
            job.style,
            job.settings,
            weights=job.weights,
            device=record.device,
            output=job.output,
            metadata=metadata,
        )

        history = history_path(job.output_dir, job.pair_id)
        write_history(history, result.history.to_rows())
    except torch.OutOfMemoryError as error:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        record = _failed(record, error, started)
        logger.warning("Pair %s ran out of memory on %s: %s", job.pair_id, record.device, error)
        raise PairFailedError(record, retryable=True) from error
    except ImageError as error:
        # The message names the file and the reason; a traceback adds nothing.
        record = _failed(record, error, started)
        logger.error("Pair %s failed on %s: %s", job.pair_id, record.device, record.error)
        raise PairFailedError(record) from error
    except Exception as error:
        record = _failed(record, error, started)
        logger.error("Pair %s failed on %s: %s", job.pair_id, record.device, record.error, exc_info=True)
        raise PairFailedError(record) from error

    timings = result.timings
    record.width = result.width
    record.height = result.height
    record.steps = result.steps
    record.content_loss = result.content_loss
    record.style_loss = result.style_loss
    record.tv_loss = result.tv_loss
    record.total_loss = result.total_loss
    record.load_seconds = timings.decode
    record.features_seconds = timings.features
    record.optimize_seconds = timings.optimize
    record.save_seconds = timings.save
    record.total_seconds = time.perf_counter() - started
    record.history = str(history.relative_to(job.output_dir))
    record.finished_at = _now()

    write_done_record(job.output_dir, Path(job.output), job.settings_hash, record.to_row())
    logger.info("Stylised %s in %.1f s on %s", job.pair_id, record.total_seconds, record.device)
    return record


def _failed(record: PairRecord, error: BaseException, started: float) -> PairRecord:
    message = str(error) or repr(error)
    return dataclasses.replace(
        record,
        status="failed",
        error=f"{type(error).__name__}: {message}",
        total_seconds=time.perf_counter() - started,
        finished_at=_now(),
    )
