"""Measure what the nst-batch flow adds over calling nst_core in one process.

The same 20 pairs (128 px, 50 steps by default) run twice in one benchmark
run:

1. baseline: ``nst_core.transfer`` on each pair in turn, in a fresh Python
   process, timed from before the first call to after the last save (imports
   excluded, model loading included);
2. flow: ``nst run MANIFEST --workers 1`` as a subprocess on the CPU, timed
   from the moment the process is started until it exits.

The baseline runs before and after the flow, and the mean of the two is used,
because other load on the machine changes during a run. It prints:

- the end-to-end ratio: flow wall time over baseline time;
- the steady-state ratio: time from the first pair's start to the last
  pair's end in the flow, over the baseline time;
- the time to the first pair: from starting ``nst run`` until the first pair
  starts optimising on a worker (its ``started_at`` in report.csv).

    python benchmarks/pipeline_overhead.py --weights path/to/weights.pth

Images and weights default to ``$NST_TEST_DATA`` (by default the ``shared``
folder beside the repository).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("NST_TEST_DATA", REPOSITORY.parent / "shared"))
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def list_images(folder: Path) -> list[Path]:
    return sorted(path for path in folder.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES)


def make_pairs(content_dir: Path, style_dir: Path, count: int) -> list[tuple[Path, Path, int]]:
    """Return ``count`` (content, style, seed) triples; the seed varies once every combination is used."""
    combinations = list(itertools.product(list_images(content_dir), list_images(style_dir)))
    if not combinations:
        raise SystemExit(f"No images in {content_dir} or {style_dir}")
    return [(*combinations[index % len(combinations)], index // len(combinations)) for index in range(count)]


def write_manifest(folder: Path, pairs: list[tuple[Path, Path, int]], size: int, steps: int) -> Path:
    lines = [f"defaults: {{size: {size}, steps: {steps}}}", "pairs:"]
    for content, style, seed in pairs:
        lines.append(f'  - {{content: "{content}", style: "{style}", seed: {seed}}}')
    path = folder / "benchmark.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


_BASELINE = """
import json, sys, time
from nst_core import TransferSettings, transfer
pairs, size, steps, weights, folder = json.loads(sys.argv[1])
started = time.perf_counter()
for index, (content, style, seed) in enumerate(pairs):
    settings = TransferSettings(size=size, steps=steps, seed=seed)
    transfer(content, style, settings, weights=weights, device="cpu", output=f"{folder}/{index}.png")
print(json.dumps({"seconds": time.perf_counter() - started}))
"""


def run_baseline(pairs, size: int, steps: int, weights: str, folder: Path) -> float:
    folder.mkdir(parents=True, exist_ok=True)
    payload = json.dumps([[(str(c), str(s), seed) for c, s, seed in pairs], size, steps, weights, str(folder)])
    completed = subprocess.run(
        [sys.executable, "-c", _BASELINE, payload], capture_output=True, text=True, cwd=REPOSITORY, check=True
    )
    return json.loads(completed.stdout.strip().splitlines()[-1])["seconds"]


def run_flow(manifest: Path, weights: str, output_dir: Path) -> dict[str, float]:
    nst = Path(sys.executable).with_name("nst")
    command = [str(nst), "run", str(manifest), "--weights", weights, "--workers", "1", "--output-dir", str(output_dir)]
    launched = time.time()
    completed = subprocess.run(command, capture_output=True, text=True, cwd=manifest.parent)
    wall = time.time() - launched
    if completed.returncode != 0:
        sys.stderr.write(completed.stderr[-4000:])
        raise SystemExit(f"nst run exited with {completed.returncode}")
    with (output_dir / "report.csv").open(encoding="utf-8", newline="") as file:
        rows = list(csv.DictReader(file))
    starts = [datetime.fromisoformat(row["started_at"]).timestamp() for row in rows]
    ends = [datetime.fromisoformat(row["finished_at"]).timestamp() for row in rows]
    return {
        "wall": wall,
        "first_pair": min(starts) - launched,
        "steady": max(ends) - min(starts),
        "done": sum(row["status"] == "done" for row in rows),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--content-dir", type=Path, default=DATA / "images" / "content")
    parser.add_argument("--style-dir", type=Path, default=DATA / "images" / "style")
    parser.add_argument("--weights", default=str(DATA / "weights" / "mobilenet_v2_standin.pth"))
    parser.add_argument("--pairs", type=int, default=20, help="number of pairs (default: 20)")
    parser.add_argument("--size", type=int, default=128, help="maximum side of each image in pixels (default: 128)")
    parser.add_argument("--steps", type=int, default=50, help="optimiser steps per pair (default: 50)")
    args = parser.parse_args()

    pairs = make_pairs(args.content_dir, args.style_dir, args.pairs)
    with tempfile.TemporaryDirectory(prefix="nst-overhead-") as temporary:
        folder = Path(temporary)
        manifest = write_manifest(folder, pairs, args.size, args.steps)
        before = run_baseline(pairs, args.size, args.steps, args.weights, folder / "baseline-1")
        flow = run_flow(manifest, args.weights, folder / "outputs")
        after = run_baseline(pairs, args.size, args.steps, args.weights, folder / "baseline-2")

    baseline = (before + after) / 2
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"pairs: {len(pairs)} at {args.size} px, {args.steps} steps, CPU; flow pairs done: {flow['done']:.0f}")
    print(f"baseline (nst_core, one process): {before:.1f} s before, {after:.1f} s after, mean {baseline:.1f} s")
    print(f"flow (nst run --workers 1): {flow['wall']:.1f} s wall")
    print(f"end-to-end ratio: {flow['wall'] / baseline:.2f} (target: at most 1.10)")
    print(f"steady-state ratio, first pair start to last pair end: {flow['steady'] / baseline:.2f}")
    print(f"time to first pair: {flow['first_pair']:.1f} s (target: at most 15 s)")


if __name__ == "__main__":
    main()
