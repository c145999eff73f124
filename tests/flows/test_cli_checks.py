"""Checks that stop a batch or a pair before any work, with exit code 2."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from PIL import Image


def _nst(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *arguments], capture_output=True, text=True, timeout=300,
        cwd=Path(__file__).resolve().parents[2],
    )


def _folders(tmp_path: Path, content_dir: Path, style_dir: Path) -> tuple[Path, Path]:
    content, style = tmp_path / "content", tmp_path / "style"
    content.mkdir()
    style.mkdir()
    shutil.copy(content_dir / "chelsea.png", content)
    shutil.copy(style_dir / "shipwreck.jpg", style)
    return content, style


def test_missing_weights_stop_validation(tmp_path, content_dir, style_dir):
    content, style = _folders(tmp_path, content_dir, style_dir)
    result = _nst("validate", "--content-dir", str(content), "--style-dir", str(style),
                  "--output-dir", str(tmp_path / "out"), "--weights", str(tmp_path / "missing.pth"))
    assert result.returncode == 2, result.stderr
    assert "weights: Weights" in result.stderr
    assert "missing.pth' not found" in result.stderr
    assert "Traceback" not in result.stderr


def test_broken_weights_file_stops_run(tmp_path, content_dir, style_dir):
    content, style = _folders(tmp_path, content_dir, style_dir)
    broken = tmp_path / "broken.pth"
    broken.write_text("not a checkpoint")
    result = _nst("run", "--content-dir", str(content), "--style-dir", str(style),
                  "--output-dir", str(tmp_path / "out"), "--weights", str(broken))
    assert result.returncode == 2, result.stderr
    assert "is not a PyTorch checkpoint" in result.stderr
    assert not (tmp_path / "out" / "report.csv").exists()


def test_output_folder_that_is_a_file(tmp_path, content_dir, style_dir, standin_weights):
    content, style = _folders(tmp_path, content_dir, style_dir)
    afile = tmp_path / "afile"
    afile.write_text("")
    result = _nst("validate", "--content-dir", str(content), "--style-dir", str(style),
                  "--output-dir", str(afile), "--weights", str(standin_weights))
    assert result.returncode == 2
    assert f"output folder '{afile}' is a file" in result.stderr


def test_output_folder_equal_to_content_folder(tmp_path, content_dir, style_dir, standin_weights):
    content, style = _folders(tmp_path, content_dir, style_dir)
    result = _nst("validate", "--content-dir", str(content), "--style-dir", str(style),
                  "--output-dir", str(content), "--weights", str(standin_weights))
    assert result.returncode == 2
    assert "is also an image folder of the batch" in result.stderr


def test_transfer_will_not_overwrite_its_input(tmp_path, standin_weights):
    photo = tmp_path / "photo.png"
    Image.new("RGB", (64, 48), (200, 100, 50)).save(photo)
    before = photo.read_bytes()
    result = _nst("transfer", str(photo), str(photo), "-o", str(photo), "--size", "64", "--steps", "2",
                  "--weights", str(standin_weights))
    assert result.returncode == 2
    assert "is also an input image" in result.stderr
    assert photo.read_bytes() == before


def test_manifest_output_that_is_an_input_image(tmp_path, content_dir, style_dir, standin_weights):
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    shutil.copy(content_dir / "chelsea.png", outputs / "mine.png")
    shutil.copy(style_dir / "the_scream.jpg", tmp_path / "style.jpg")
    before = (outputs / "mine.png").read_bytes()
    manifest = tmp_path / "m.yaml"
    manifest.write_text("pairs:\n  - {content: outputs/mine.png, style: style.jpg, output: mine.png}\n")
    result = _nst("run", str(manifest), "--weights", str(standin_weights))
    assert result.returncode == 2
    assert "is also an input image of the batch" in result.stderr
    assert (outputs / "mine.png").read_bytes() == before


def test_cluster_address_that_is_not_a_scheduler():
    import socket

    import pytest

    from flows.workers import check_scheduler

    # A listening socket that never responds, like a web server waiting for a
    # request, must not leave the run waiting for ever.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        address = f"tcp://127.0.0.1:{listener.getsockname()[1]}"
        with pytest.raises(ValueError, match=r"No Dask scheduler responded at tcp://127.0.0.1:\d+ within 2 s"):
            check_scheduler(address, timeout=2)
