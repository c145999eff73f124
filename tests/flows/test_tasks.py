"""The per-pair task's pieces that cross process boundaries, and its retry rule."""

from __future__ import annotations

import pickle
from pathlib import Path

from prefect.states import Failed

from flows.report import PairRecord
from flows.tasks import PairFailedError, PairJob, _retry_out_of_memory
from nst_core import ImageError
from nst_core.settings import TransferSettings


def job() -> PairJob:
    return PairJob(
        pair_id="astronaut__shipwreck",
        content="/in/astronaut.png",
        style="/in/shipwreck.jpg",
        output="/out/astronaut__shipwreck.png",
        output_dir="/out",
        settings=TransferSettings(size=64, steps=3),
        settings_hash="0123456789ab",
        weights="random",
    )


def failed_record() -> PairRecord:
    return job().base_record("failed")


def test_job_and_error_survive_pickling() -> None:
    error = PairFailedError(failed_record(), retryable=True)

    assert pickle.loads(pickle.dumps(job())) == job()
    copy = pickle.loads(pickle.dumps(error))
    assert copy.record == error.record
    assert copy.retryable is True


def test_out_of_memory_is_retried() -> None:
    state = Failed(data=PairFailedError(failed_record(), retryable=True))

    assert _retry_out_of_memory(None, None, state) is True


def test_decoding_error_is_not_retried() -> None:
    state = Failed(data=PairFailedError(failed_record(), retryable=False))

    assert _retry_out_of_memory(None, None, state) is False


def test_other_exceptions_are_not_retried() -> None:
    state = Failed(data=ImageError(Path("/in/a.jpg"), "truncated"))

    assert _retry_out_of_memory(None, None, state) is False


def test_base_record_carries_plan_fields() -> None:
    record = job().base_record()

    assert record.status == "done"
    assert record.seed == 0
    assert record.settings_hash == "0123456789ab"
    assert record.output == "/out/astronaut__shipwreck.png"
