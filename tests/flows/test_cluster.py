"""A batch on an existing Dask cluster: a real scheduler and two workers on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from flows.batch import run_batch
from flows.report import read_report
from flows.workers import plan_cluster

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]

DASK = Path(sys.executable).with_name("dask")


def start(command: list[str], log: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        command,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env={**os.environ, **env},
        start_new_session=True,
    )


def wait_for_workers(address: str, count: int, timeout: float = 120) -> None:
    from distributed import Client

    with Client(address, timeout=timeout) as client:
        client.wait_for_workers(count, timeout=timeout)


@pytest.fixture
def dask_cluster(tmp_path: Path, free_port):
    """A ``dask scheduler`` and two ``dask worker`` processes on 127.0.0.1."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    processes = [
        start(
            [str(DASK), "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
            tmp_path / "scheduler.log",
            DASK_DISTRIBUTED__SCHEDULER__WORKER_SATURATION="1.0",
        )
    ]
    try:
        for name in ("alpha", "beta"):
            processes.append(
                start(
                    [str(DASK), "worker", address, "--name", name, "--nthreads", "1", "--host", "127.0.0.1",
                     "--no-dashboard"],
                    tmp_path / f"worker-{name}.log",
                    NST_DEVICE="cpu",
                    OMP_NUM_THREADS="1",
                )
            )
        wait_for_workers(address, 2)
        yield address
    finally:
        for process in reversed(processes):
            os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def test_both_remote_workers_run_pairs(
    dask_cluster: str, tmp_path: Path, images: dict[str, Path], standin_weights: Path
) -> None:
    manifest = tmp_path / "night.yaml"
    manifest.write_text(
        textwrap.dedent(
            f"""
            defaults: {{size: 64, steps: 30}}
            content_dir: "{images['astronaut'].parent}"
            style_dir: "{images['shipwreck'].parent}"
            style_glob: "s*.jpg"
            """
        ),
        encoding="utf-8",
    )

    state = run_batch(
        manifest=str(manifest), cluster=dask_cluster, weights=str(standin_weights), return_state=True
    )
    frame = read_report(tmp_path / "outputs" / "report.csv")

    assert state.is_completed(), state.message
    assert len(frame) == 8
    assert set(frame["status"]) == {"done"}
    workers = {value.split(" ")[0] for value in frame["worker"]}
    assert workers == {"alpha", "beta"}, f"worker column: {sorted(set(frame['worker']))}"
    assert set(frame["device"]) == {"cpu"}


def test_cluster_address_is_checked() -> None:
    with pytest.raises(ValueError, match="Invalid cluster address 'localhost:8786'"):
        plan_cluster(cluster="localhost:8786")


def test_devices_with_cluster_are_rejected() -> None:
    with pytest.raises(ValueError, match="NST_DEVICE"):
        plan_cluster(devices=["cpu"], cluster="tcp://127.0.0.1:8786")


def test_unknown_device_is_rejected() -> None:
    with pytest.raises(ValueError, match="Invalid device 'tpu:0'"):
        plan_cluster(devices=["tpu:0"])


def test_cpu_workers_split_the_cores() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("CPU workers are planned only on a machine without a GPU")
    plan = plan_cluster(workers=2)

    assert plan.devices == ("cpu", "cpu")
    assert plan.threads == max(1, (os.cpu_count() or 1) // 2)


def test_zero_workers_are_rejected() -> None:
    with pytest.raises(ValueError, match="workers must be a whole number of at least 1. Got 0"):
        plan_cluster(workers=0)
