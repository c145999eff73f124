"""A batch on a Dask cluster that loses a worker: a real scheduler and two workers on loopback.

The commands are those of docs/operations.md with 127.0.0.1 and free ports:
``dask scheduler``, one ``dask worker`` per machine, and ``nst run --cluster``.
"""

from __future__ import annotations

import datetime
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flows.report import read_report

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
WORKER_NAMES = ("alpha", "beta")


def start(command: list[str], log: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        command, stdout=log.open("w"), stderr=subprocess.STDOUT, env={**os.environ, **env}, start_new_session=True
    )


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
    process.wait()


class Cluster:
    """A ``dask scheduler`` and named ``dask worker`` processes, each in its own process group."""

    def __init__(self, address: str, scheduler: subprocess.Popen, workers: dict[str, subprocess.Popen]) -> None:
        self.address = address
        self.scheduler = scheduler
        self.workers = workers

    def worker_addresses(self) -> dict[str, str]:
        from distributed import Client

        with Client(self.address, timeout=60) as client:
            return {info["name"]: address for address, info in client.scheduler_info()["workers"].items()}

    def processing(self) -> dict[str, list]:
        """Keys of the tasks that each worker, by name, is running or holds."""
        from distributed import Client

        names = {address: name for name, address in self.worker_addresses().items()}
        with Client(self.address, timeout=60) as client:
            return {names[address]: list(keys) for address, keys in client.processing().items() if address in names}

    def transitions(self, key) -> list[str]:
        """The states that the scheduler moved task ``key`` into, in order."""
        from distributed import Client

        def story(dask_scheduler) -> list[str]:
            return [finish for _, _, finish, *_ in dask_scheduler.story(key)]

        with Client(self.address, timeout=60) as client:
            return client.run_on_scheduler(story)


@pytest.fixture
def cluster(tmp_path: Path, free_port) -> Iterator[Cluster]:
    """A scheduler and the workers ``alpha`` and ``beta``, each one thread on the CPU."""
    from distributed import Client

    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    scheduler = start(
        [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
         "--dashboard-address", f"127.0.0.1:{free_port()}"],
        tmp_path / "scheduler.log",
        DASK_DISTRIBUTED__SCHEDULER__WORKER_SATURATION="1.0",
    )
    workers: dict[str, subprocess.Popen] = {}
    try:
        for name in WORKER_NAMES:
            workers[name] = start(
                [str(BIN / "dask"), "worker", address, "--name", name, "--nthreads", "1", "--host", "127.0.0.1",
                 "--no-dashboard"],
                tmp_path / f"worker-{name}.log",
                NST_DEVICE="cpu",
                OMP_NUM_THREADS="1",
            )
        with Client(address, timeout=120) as client:
            client.wait_for_workers(len(WORKER_NAMES), timeout=120)
        yield Cluster(address, scheduler, workers)
    finally:
        for process in workers.values():
            stop(process)
        stop(scheduler)


def report_rows(path: Path) -> int:
    if not path.is_file():
        return 0
    return len(read_report(path))


def test_killed_worker_pair_reruns_elsewhere(
    cluster: Cluster, tmp_path: Path, images: dict[str, Path], standin_weights: Path
) -> None:
    manifest = tmp_path / "night.yaml"
    manifest.write_text(
        textwrap.dedent(
            f"""
            defaults: {{size: 64, steps: 300}}
            content_dir: "{images['astronaut'].parent}"
            style_dir: "{images['shipwreck'].parent}"
            style_glob: "s*.jpg"
            """
        ),
        encoding="utf-8",
    )
    output_dir = tmp_path / "outputs"
    report = output_dir / "report.csv"
    run_log = tmp_path / "run.log"
    run = start(
        [str(BIN / "nst"), "run", str(manifest), "--cluster", cluster.address, "--weights", str(standin_weights)],
        run_log,
    )
    try:
        # Kill alpha while it runs a pair, after at least one pair is in the report.
        # NOTE: A pair that ends between this snapshot and the kill (a few
        # milliseconds) fails the test; 300 steps keep each pair seconds long.
        deadline = time.monotonic() + 240
        running_on_alpha: list = []
        while not running_on_alpha:
            if time.monotonic() > deadline:
                pytest.fail(f"no pair finished while alpha was busy; run log:\n{run_log.read_text()}")
            if report_rows(report) >= 1:
                running_on_alpha = cluster.processing().get("alpha", [])
            time.sleep(0.2)
        os.killpg(cluster.workers["alpha"].pid, signal.SIGKILL)
        killed_at = datetime.datetime.now(datetime.timezone.utc)
        cluster.workers["alpha"].wait(timeout=20)
        code = run.wait(timeout=300)
        killed_pair_states = cluster.transitions(running_on_alpha[0])
    finally:
        stop(run)
    frame = read_report(report)
    workers = [value.split(" ")[0] for value in frame["worker"]]
    finished = [datetime.datetime.fromisoformat(value) for value in frame["finished_at"]]

    assert code == 0, run_log.read_text()
    assert len(frame) == 8
    assert frame["pair_id"].is_unique
    assert set(frame["status"]) == {"done"}
    for pair_id in frame["pair_id"]:
        assert (output_dir / f"{pair_id}.png").is_file()
    assert set(workers) <= set(WORKER_NAMES)
    alpha_after_kill = [when for worker, when in zip(workers, finished) if worker == "alpha" and when > killed_at]
    assert alpha_after_kill == []
    assert workers.count("beta") >= 1
    # The pair that alpha was running went back to the queue and ran again on beta.
    assert killed_pair_states.count("processing") == 2, killed_pair_states
    last_processing = max(index for index, state in enumerate(killed_pair_states) if state == "processing")
    assert "memory" in killed_pair_states[last_processing:], killed_pair_states
