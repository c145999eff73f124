"""The ``nst run`` and ``nst validate`` commands, run as subprocesses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from flows.report import read_report

NST = Path(sys.executable).with_name("nst")
pytestmark = pytest.mark.slow


def copy_images(images: dict[str, Path], folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / images[name].name).write_bytes(images[name].read_bytes())


def assert_quiet(stderr: str) -> None:
    assert "Traceback" not in stderr
    assert "telemetry" not in stderr.lower()
    assert "analytics" not in stderr.lower()


def test_validate_prints_plan(tmp_path: Path, images: dict[str, Path], run_nst, standin_weights: Path) -> None:
    copy_images(images, tmp_path / "in", ["astronaut", "shipwreck"])
    (tmp_path / "m.yaml").write_text(
        "pairs:\n  - {content: in/astronaut.png, style: in/shipwreck.jpg, steps: 3}\n", encoding="utf-8"
    )

    result = run_nst("validate", "m.yaml", "--weights", str(standin_weights), cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert "run   astronaut__shipwreck  (line 2)" in result.stdout
    assert "1 pairs to run, 0 already done" in result.stdout
    assert f"Output folder: {tmp_path / 'outputs'}" in result.stdout


def test_validate_invalid_manifest_exits_2(tmp_path: Path, run_nst) -> None:
    (tmp_path / "m.yaml").write_text(
        "pairs:\n  - {content: nope.png, style: gone.jpg, steps: 0}\n", encoding="utf-8"
    )

    result = run_nst("validate", "m.yaml", "--weights", "random", cwd=tmp_path)

    assert result.returncode == 2
    assert "3 problems" in result.stderr
    assert "line 2: content image 'nope.png' not found" in result.stderr
    assert "line 2: style image 'gone.jpg' not found" in result.stderr
    assert "line 2: steps must be between 1 and 100000. Got 0" in result.stderr


def test_run_invalid_manifest_exits_2_and_writes_nothing(tmp_path: Path, run_nst) -> None:
    (tmp_path / "m.csv").write_text("content,style,colour\na.png,b.png,red\n", encoding="utf-8")

    result = run_nst("run", "m.csv", "--weights", "random", cwd=tmp_path)

    assert result.returncode == 2
    assert "unknown column 'colour'" in result.stderr
    assert not (tmp_path / "outputs").exists()


def test_run_rejects_manifest_with_folders(tmp_path: Path, run_nst) -> None:
    result = run_nst("run", "m.yaml", "--content-dir", "a", "--style-dir", "b", cwd=tmp_path)

    assert result.returncode == 2
    assert "not both" in result.stderr


def test_run_spreadsheet_csv_exits_0(
    tmp_path: Path, images: dict[str, Path], run_nst, standin_weights: Path
) -> None:
    batch = tmp_path / "batch"
    copy_images(images, batch / "photos", ["astronaut", "chelsea"])
    copy_images(images, batch / "paintings", ["starry_night"])
    rows = [
        "content,style,output,size,steps",
        '"photos/astronaut.png","paintings/starry_night.jpg",,64,3',
        '"photos/chelsea.png","paintings/starry_night.jpg","=cat.png",64,',
    ]
    (batch / "sheet.csv").write_bytes(b"\xef\xbb\xbf" + "\r\n".join(rows).encode() + b"\r\n")
    (tmp_path / "elsewhere").mkdir()

    result = run_nst(
        "run",
        "../batch/sheet.csv",
        "--set", "steps=4",
        "--weights", str(standin_weights),
        cwd=tmp_path / "elsewhere",
        timeout=300,
    )

    assert result.returncode == 0, result.stderr[-3000:]
    assert_quiet(result.stderr)
    assert "2 pairs: 2 done, 0 skipped, 0 failed" in result.stdout
    frame = read_report(batch / "outputs" / "report.csv").set_index("pair_id")
    assert sorted(frame.index) == ["=cat", "astronaut__starry_night"]
    assert frame.loc["=cat", "steps"] == 4
    assert frame.loc["astronaut__starry_night", "steps"] == 3
    assert (batch / "outputs" / "=cat.png").is_file()
    assert "'=cat" in (batch / "outputs" / "report.csv").read_text(encoding="utf-8")


def test_folder_mode_with_corrupt_image_exits_1(
    tmp_path: Path, images: dict[str, Path], corrupt_jpeg: Path, run_nst, standin_weights: Path
) -> None:
    copy_images(images, tmp_path / "photos", ["coffee"])
    (tmp_path / "photos" / "broken.jpg").write_bytes(corrupt_jpeg.read_bytes())
    copy_images(images, tmp_path / "paintings", ["shipwreck"])
    result = run_nst(
        "run",
        "--content-dir", "photos",
        "--style-dir", "paintings",
        "--set", "size=64",
        "--set", "steps=3",
        "--weights", str(standin_weights),
        cwd=tmp_path,
        timeout=400,
    )

    assert result.returncode == 1, result.stderr[-3000:]
    assert "2 pairs: 1 done, 0 skipped, 1 failed" in result.stdout
    frame = read_report(tmp_path / "outputs" / "report.csv").set_index("pair_id")
    assert frame.loc["broken__shipwreck", "status"] == "failed"
    assert "broken.jpg" in frame.loc["broken__shipwreck", "error"]
    assert frame.loc["coffee__shipwreck", "status"] == "done"


def test_rerun_after_sigkill_finishes_every_pair(
    tmp_path: Path, images: dict[str, Path], run_nst, standin_weights: Path
) -> None:
    batch = tmp_path / "batch"
    copy_images(images, batch / "photos", ["astronaut", "chelsea"])
    copy_images(images, batch / "paintings", ["shipwreck", "starry_night"])
    (batch / "m.yaml").write_text(
        "defaults: {size: 64, steps: 60}\ncontent_dir: photos\nstyle_dir: paintings\n", encoding="utf-8"
    )
    outputs = batch / "outputs"
    command = [str(NST), "run", "m.yaml", "--weights", str(standin_weights)]
    process = subprocess.Popen(
        command, cwd=batch, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 240
        while not list(outputs.glob("*.png")) and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.05)
        assert process.poll() is None, "the run ended before any output appeared"
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        # The temporary Prefect server and the Dask workers share the session.
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    finished_before = len(list(outputs.glob("*.png")))
    assert finished_before < 4, "every pair finished before the kill; the test needs longer pairs"

    result = run_nst("run", "m.yaml", "--weights", str(standin_weights), cwd=batch, timeout=400)

    assert result.returncode == 0, result.stderr[-3000:]
    frame = read_report(outputs / "report.csv")
    assert len(frame) == 4
    assert set(frame["status"]) <= {"done", "skipped"}
    assert (frame["status"] == "skipped").sum() >= finished_before
    for pair_id in frame["pair_id"]:
        with Image.open(outputs / f"{pair_id}.png") as image:
            image.load()
    assert list(outputs.rglob("*.partial")) == []
