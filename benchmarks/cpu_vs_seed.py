"""Time nst_core against the original single-pair script on the same pair.

Both programs run the original settings (256 px squashed square, no ImageNet
normalisation, Adam at lr 0.01, style weight 1e5, 200 steps) in fresh
processes, alternating, several times. Each process first imports torch,
torchvision and Pillow, then times the pair itself: decoding, building the
network, optimising and saving. The benchmark prints, for each program, the
median wall-clock and CPU seconds per pair, the final losses and the peak
resident memory, and the speed-up of nst_core on both clocks.

    python benchmarks/cpu_vs_seed.py --repeats 5
    python benchmarks/cpu_vs_seed.py --repeats 5 --threads 1

On a machine busy with other work, torch's worker threads wait for cores and
both clocks swell by random amounts. ``--threads 1`` runs both programs on one
thread, whose CPU seconds stay close to those of a quiet machine.

The original script, the images and the weights are looked up in the test
data folder, ``$NST_TEST_DATA`` or by default ``shared/`` beside the
repository; every path can be given on the command line instead.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import resource
import runpy
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("NST_TEST_DATA", REPOSITORY.parent / "shared"))


def _timed(run) -> dict:
    # Imports happen before the clocks start, so that neither program pays
    # for them.
    import torch  # noqa: F401
    import torchvision  # noqa: F401
    from PIL import Image  # noqa: F401

    wall, cpu = time.perf_counter(), time.process_time()
    record = run()
    record["wall_seconds"] = time.perf_counter() - wall
    record["cpu_seconds"] = time.process_time() - cpu
    record["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return record


def run_seed_script(args: argparse.Namespace) -> dict:
    """Run the original script in this process and return its printed JSON."""
    sys.argv = [
        str(args.seed_script), str(args.content), str(args.style), str(args.output),
        "--weights", str(args.weights), "--steps", str(args.steps), "--size", str(args.size), "--device", "cpu",
    ]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        runpy.run_path(str(args.seed_script), run_name="__main__")
    return json.loads(printed.getvalue().strip().splitlines()[-1])


def run_nst_core(args: argparse.Namespace) -> dict:
    """Stylise the pair with nst_core and return the same fields as the original script."""
    sys.path.insert(0, str(REPOSITORY))
    from nst_core import TransferSettings, transfer

    settings = TransferSettings(size=args.size, resize="square", normalize=False, steps=args.steps)
    result = transfer(args.content, args.style, settings, weights=args.weights, device="cpu", output=args.output)
    return {"content_loss": result.content_loss, "style_loss": result.style_loss, "total_loss": result.total_loss}


PROGRAMS = {"seed script": run_seed_script, "nst_core": run_nst_core}


def measure(program: str, args: argparse.Namespace, folder: str) -> dict:
    """Run one program on the pair in a fresh process and return its record."""
    command = [
        sys.executable, str(Path(__file__).resolve()), "--run", program, "--output", f"{folder}/out.png",
        "--seed-script", str(args.seed_script), "--content", str(args.content), "--style", str(args.style),
        "--weights", str(args.weights), "--steps", str(args.steps), "--size", str(args.size),
    ]
    environment = dict(os.environ)
    if args.threads is not None:
        environment["OMP_NUM_THREADS"] = str(args.threads)
    completed = subprocess.run(command, capture_output=True, text=True, env=environment)
    if completed.returncode != 0:
        raise RuntimeError(f"{program} failed with exit code {completed.returncode}:\n{completed.stderr}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed-script", type=Path, default=DATA / "reference" / "seed_transfer.py")
    parser.add_argument("--content", type=Path, default=DATA / "images" / "content" / "rocket.jpg")
    parser.add_argument("--style", type=Path, default=DATA / "images" / "style" / "starry_night.jpg")
    parser.add_argument("--weights", type=Path, default=DATA / "weights" / "mobilenet_v2_standin.pth")
    parser.add_argument("--size", type=int, default=256, help="image size in pixels (default: 256)")
    parser.add_argument("--steps", type=int, default=200, help="optimiser steps (default: 200)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each program (default: 3)")
    parser.add_argument("--threads", type=int, help="torch threads of both programs (default: torch's choice)")
    parser.add_argument("--run", choices=PROGRAMS, help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.run:
        print(json.dumps(_timed(lambda: PROGRAMS[args.run](args))))
        return
    for path in (args.seed_script, args.content, args.style, args.weights):
        if not path.exists():
            parser.error(f"{path} not found. Pass it on the command line or set NST_TEST_DATA")

    records: dict[str, list[dict]] = {name: [] for name in PROGRAMS}
    with tempfile.TemporaryDirectory() as folder:
        for repeat in range(args.repeats):
            for name in PROGRAMS:
                record = measure(name, args, folder)
                records[name].append(record)
                print(f"run {repeat + 1}/{args.repeats} {name:11s} wall {record['wall_seconds']:7.2f} s  "
                      f"cpu {record['cpu_seconds']:7.2f} s  total loss {record['total_loss']:.4f}", file=sys.stderr)

    threads = args.threads if args.threads is not None else "default"
    print(f"\n{platform.machine()}, {os.cpu_count()} cores, torch threads {threads}; {args.content.name} with "
          f"{args.style.name}, {args.size} px square, {args.steps} steps, {args.repeats} runs each; "
          f"load average before the last run {os.getloadavg()[0]:.1f}\n")
    print(f"{'program':12s} {'wall s/pair':>12s} {'cpu s/pair':>11s} {'total loss':>11s} {'content':>9s} "
          f"{'style':>11s} {'peak RSS MiB':>13s}")
    wall, cpu = {}, {}
    for name, runs in records.items():
        wall[name] = statistics.median(run["wall_seconds"] for run in runs)
        cpu[name] = statistics.median(run["cpu_seconds"] for run in runs)
        last = runs[-1]
        print(f"{name:12s} {wall[name]:12.2f} {cpu[name]:11.2f} {last['total_loss']:11.4f} "
              f"{last['content_loss']:9.4f} {last['style_loss']:11.4e} "
              f"{max(run['peak_rss_mib'] for run in runs):13.0f}")
    seed_loss = records["seed script"][-1]["total_loss"]
    core_loss = records["nst_core"][-1]["total_loss"]
    print(f"\nspeed-up of nst_core (median): wall {wall['seed script'] / wall['nst_core']:.2f}x, "
          f"cpu {cpu['seed script'] / cpu['nst_core']:.2f}x; "
          f"final total loss {100 * (core_loss - seed_loss) / seed_loss:+.2f}% against the script")


if __name__ == "__main__":
    main()
