"""Two ``nst run`` on one output folder: the second stops with a message naming the first, which finishes intact.

The folder starts with the lock file of a run killed with SIGKILL, which must not block either run.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from PIL import Image

from flows.report import read_report

pytestmark = pytest.mark.slow

NST = Path(sys.executable).with_name("nst")


def write_manifest(folder: Path, images: dict[str, Path], steps: int) -> Path:
    manifest = folder / "overlap.yaml"
    manifest.write_text(
        textwrap.dedent(
            f"""
            defaults: {{size: 64, steps: {steps}}}
            pairs:
              - {{content: "{images['astronaut']}", style: "{images['shipwreck']}"}}
              - {{content: "{images['chelsea']}", style: "{images['the_scream']}"}}
            """
        ),
        encoding="utf-8",
    )
    return manifest


def wait_for_lock_holder(lock: Path, holder: str, process: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the first run exited with {process.returncode} before taking the lock:\n{log.read_text()}")
        if lock.is_file() and lock.read_text(encoding="utf-8").strip() == holder:
            return
        time.sleep(0.2)
    pytest.fail(f"{lock} did not name '{holder}' within {timeout} s:\n{log.read_text()}")


def lock_and_kill(output_dir: Path) -> str:
    """Take the folder's lock in a process, kill that process with SIGKILL and return the lock file's text."""
    holder_script = (
        "import sys, time\n"
        "from flows.plan import OutputLock\n"
        "with OutputLock(sys.argv[1]):\n"
        "    print('locked', flush=True)\n"
        "    time.sleep(600)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", holder_script, str(output_dir)], stdout=subprocess.PIPE, text=True,
        start_new_session=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait(timeout=20)
    finally:
        kill_group(holder)
        holder.stdout.close()
    text = (output_dir / ".nst" / "lock").read_text(encoding="utf-8").strip()
    assert text == f"pid {holder.pid} on {socket.gethostname()}"
    return text


def kill_group(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGCONT)
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def test_second_run_stops_and_first_finishes(
    tmp_path: Path, images: dict[str, Path], standin_weights: Path
) -> None:
    manifest = write_manifest(tmp_path, images, steps=20)
    output_dir = tmp_path / "outputs"
    lock = output_dir / ".nst" / "lock"
    # A run killed with SIGKILL leaves its lock file behind. The kernel has
    # released the lock, so the first run below must start regardless.
    stale_holder = lock_and_kill(output_dir)
    command = [str(NST), "run", str(manifest), "--output-dir", str(output_dir), "--weights", str(standin_weights)]
    first_log = tmp_path / "first.log"
    first = subprocess.Popen(
        command, cwd=tmp_path, stdout=first_log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        holder = f"pid {first.pid} on {socket.gethostname()}"
        wait_for_lock_holder(lock, holder, first, first_log)
        # Freeze the first run (its process, workers and Prefect server) so
        # that it is still running, holding the lock, whatever the second
        # run's start-up time is.
        os.killpg(first.pid, signal.SIGSTOP)
        second = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=240)
        os.killpg(first.pid, signal.SIGCONT)
        first_code = first.wait(timeout=300)
    finally:
        kill_group(first)
    frame = read_report(output_dir / "report.csv")

    assert stale_holder != f"pid {first.pid} on {socket.gethostname()}"
    assert second.returncode == 1, second.stdout + second.stderr
    assert f"Output folder {output_dir} is in use by {holder}" in second.stderr
    assert "Traceback" not in second.stderr
    assert first_code == 0, first_log.read_text()
    assert sorted(frame["pair_id"]) == ["astronaut__shipwreck", "chelsea__the_scream"]
    assert set(frame["status"]) == {"done"}
    for pair_id in frame["pair_id"]:
        with Image.open(output_dir / f"{pair_id}.png") as image:
            image.load()
            assert max(image.size) == 64
