"""Time building the contact sheet and loss plots of a large run.

A few pairs are stylised for real (``nst_core.transfer``, 128 px and 20 steps
by default) and written as the pipeline writes them. Their rows, images and
histories are then copied under new pair ids until the run has ``--pairs``
pairs (500 by default), each with its own output image and history, sharing
the content and style images as a real batch does. The benchmark prints:

- the cold build: ``build_review`` with no thumbnails or curves yet;
- the warm build: ``build_review`` again, reusing every thumbnail and curve;
- the baseline: the mean seconds of one real transfer in the same run, and
  the cold build's seconds per pair as a fraction of it;
- the size of ``report.html``, ``thumbnails/`` and ``curves/``.

    python benchmarks/review_build.py --pairs 500

Images and weights default to ``$NST_TEST_DATA`` (by default the ``shared``
folder beside the repository).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("NST_TEST_DATA", REPOSITORY.parent / "shared"))
sys.path.insert(0, str(REPOSITORY))

from flows.report import PairRecord, ReportWriter, history_path, write_history  # noqa: E402
from flows.review import build_review  # noqa: E402
from nst_core import TransferSettings, transfer  # noqa: E402


def stylise_pairs(output_dir: Path, pairs: list[tuple[Path, Path]], weights: Path, settings: TransferSettings):
    """Stylise each pair and return its report record and the seconds it took."""
    records = []
    seconds = []
    for content, style in pairs:
        pair_id = f"{content.stem}__{style.stem}"
        started = time.perf_counter()
        result = transfer(content, style, settings, weights=weights, device="cpu", output=output_dir / f"{pair_id}.png")
        seconds.append(time.perf_counter() - started)
        history = history_path(output_dir, pair_id)
        write_history(history, result.history.to_rows())
        records.append(PairRecord(
            pair_id=pair_id, content=str(content), style=str(style), output=str(result.output), status="done",
            width=result.width, height=result.height, steps=result.steps, content_loss=result.content_loss,
            style_loss=result.style_loss, tv_loss=result.tv_loss, total_loss=result.total_loss,
            total_seconds=result.timings.total, device=result.device, worker="benchmark",
            history=history.relative_to(output_dir).as_posix(),
        ))  # fmt: skip
    return records, seconds


def replicate(source_dir: Path, output_dir: Path, records: list[PairRecord], count: int) -> list[PairRecord]:
    """Copy the records of ``source_dir``, their outputs and histories, under new pair ids into ``output_dir``."""
    copies = []
    for index in range(count):
        source = records[index % len(records)]
        pair_id = f"{source.pair_id}__{index:05d}"
        output = output_dir / f"{pair_id}.png"
        shutil.copyfile(source.output, output)
        history = history_path(output_dir, pair_id)
        history.parent.mkdir(exist_ok=True)
        shutil.copyfile(source_dir / source.history, history)
        copies.append(PairRecord.from_row(
            source.to_row(), pair_id=pair_id, output=str(output), history=history.relative_to(output_dir).as_posix()
        ))  # fmt: skip
    return copies


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.iterdir() if path.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=500, help="pairs in the reviewed run (default: 500)")
    parser.add_argument("--size", type=int, default=128, help="size of the stylised images in pixels (default: 128)")
    parser.add_argument("--steps", type=int, default=20, help="optimiser steps of the real transfers (default: 20)")
    parser.add_argument("--content-dir", type=Path, default=DATA / "images" / "content")
    parser.add_argument("--style-dir", type=Path, default=DATA / "images" / "style")
    parser.add_argument("--weights", type=Path, default=DATA / "weights" / "mobilenet_v2_standin.pth")
    args = parser.parse_args()
    if args.pairs < 1:
        parser.error(f"--pairs must be at least 1. Got {args.pairs}")

    contents = sorted(path for path in args.content_dir.iterdir() if path.suffix in (".png", ".jpg"))
    styles = sorted(path for path in args.style_dir.iterdir() if path.suffix in (".png", ".jpg"))
    pairs = [(content, style) for content in contents[:2] for style in styles[:2]]
    settings = TransferSettings(size=args.size, steps=args.steps)

    with tempfile.TemporaryDirectory(prefix="nst-review-benchmark-") as folder:
        stylised = Path(folder) / "stylised"
        run = Path(folder) / "run"
        stylised.mkdir()
        run.mkdir()
        records, transfer_seconds = stylise_pairs(stylised, pairs, args.weights, settings)
        copies = replicate(stylised, run, records, args.pairs)
        with ReportWriter(run / "report.csv") as report:
            report.start(copies)

        started = time.perf_counter()
        review = build_review(run)
        cold = time.perf_counter() - started
        started = time.perf_counter()
        build_review(run)
        warm = time.perf_counter() - started

        # The first transfer also loads the model, so it is left out of the mean.
        baseline = sum(transfer_seconds[1:]) / max(len(transfer_seconds) - 1, 1)
        print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
        print(f"run: {len(review.rows)} pairs of {args.size} px outputs, {len(review.warnings)} warnings")
        print(f"cold build: {cold:.2f} s ({cold / args.pairs * 1000:.1f} ms per pair)")
        print(f"warm build: {warm:.2f} s ({warm / args.pairs * 1000:.1f} ms per pair), {warm / cold:.2f} of cold")
        print(f"baseline: one transfer ({args.size} px, {args.steps} steps, CPU) takes {baseline:.2f} s; "
              f"the cold build costs {cold / args.pairs / baseline:.3f} of it per pair")  # fmt: skip
        print(f"report.html: {review.html.stat().st_size / 1024:.0f} KiB, "
              f"thumbnails/: {folder_bytes(run / 'thumbnails') / 1024:.0f} KiB, "
              f"curves/: {folder_bytes(run / 'curves') / 1024:.0f} KiB")  # fmt: skip


if __name__ == "__main__":
    main()
