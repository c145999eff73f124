"""Time nst_core against the original single-pair script on the same pair.

Both programs run the original settings (256 px squashed square, no ImageNet
normalisation, Adam at lr 0.01, style weight 1e5, 200 steps) in fresh
processes, alternating, several times. Each reports the seconds it spent on
the pair after its imports (decoding, building the network, optimising,
saving), so Python and torch start-up count for neither. The benchmark prints
the median of each, their ratio, the final losses and the peak resident
memory of each process.

    python benchmarks/cpu_vs_seed.py --repeats 5

The original script is looked up in ``$NST_TEST_DATA/reference`` (by default
the ``shared`` folder beside the repository), as are the images and weights;
every path can be given on the command line instead.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("NST_TEST_DATA", REPOSITORY.parent / "shared"))


def run_nst_core(args: argparse.Namespace) -> None:
    """Stylise one pair with nst_core and print the seed script's JSON fields."""
    sys.path.insert(0, str(REPOSITORY))
    from nst_core import TransferSettings, transfer

    settings = TransferSettings(size=args.size, resize="square", normalize=False, steps=args.steps)
    started = time.perf_counter()
    result = transfer(args.content, args.style, settings, weights=args.weights, device="cpu", output=args.output)
    print(json.dumps({
        "content_loss": result.content_loss,
        "style_loss": result.style_loss,
        "total_loss": result.total_loss,
        "loop_seconds": result.timings.optimize,
        "total_seconds": time.perf_counter() - started,
    }))


# Runs a command in a fresh wrapper process, so that RUSAGE_CHILDREN in the
# wrapper holds the peak memory of that command alone.
_WRAPPER = """
import json, resource, subprocess, sys
completed = subprocess.run(sys.argv[1:], capture_output=True, text=True)
sys.stderr.write(completed.stderr)
if completed.returncode:
    sys.exit(completed.returncode)
record = json.loads(completed.stdout.strip().splitlines()[-1])
record["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(json.dumps(record))
"""


def measure(command: list[str]) -> dict:
    """Run a command that prints one JSON line; add its peak resident memory in MiB."""
    completed = subprocess.run([sys.executable, "-c", _WRAPPER, *command], capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"{command[1]} failed with exit code {completed.returncode}:\n{completed.stderr}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed-script", type=Path, default=DATA / "reference" / "seed_transfer.py")
    parser.add_argument("--content", type=Path, default=DATA / "images" / "content" / "rocket.jpg")
    parser.add_argument("--style", type=Path, default=DATA / "images" / "style" / "starry_night.jpg")
    parser.add_argument("--weights", type=Path, default=DATA / "weights" / "mobilenet_v2_standin.pth")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each program (default: 3)")
    parser.add_argument("--run-nst-core", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.run_nst_core:
        run_nst_core(args)
        return
    for path in (args.seed_script, args.content, args.style, args.weights):
        if not path.exists():
            parser.error(f"{path} not found. Pass it on the command line or set NST_TEST_DATA")

    common = [str(args.content), str(args.style)]
    records: dict[str, list[dict]] = {"seed script": [], "nst_core": []}
    with tempfile.TemporaryDirectory() as folder:
        seed_command = [
            sys.executable, str(args.seed_script), *common, f"{folder}/seed.png", "--weights", str(args.weights),
            "--steps", str(args.steps), "--size", str(args.size), "--device", "cpu",
        ]
        core_command = [
            sys.executable, str(Path(__file__).resolve()), "--run-nst-core", "--content", str(args.content),
            "--style", str(args.style), "--weights", str(args.weights), "--steps", str(args.steps),
            "--size", str(args.size), "--output", f"{folder}/nst_core.png",
        ]
        for repeat in range(args.repeats):
            for name, command in (("seed script", seed_command), ("nst_core", core_command)):
                record = measure(command)
                records[name].append(record)
                print(f"run {repeat + 1}/{args.repeats} {name:11s} {record['total_seconds']:7.2f} s "
                      f"total loss {record['total_loss']:.4f}", file=sys.stderr)

    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads default; "
          f"{args.size} px square, {args.steps} steps, {args.repeats} runs each\n")
    print(f"{'program':12s} {'median s/pair':>14s} {'total loss':>12s} {'content':>10s} {'style':>12s} "
          f"{'peak RSS MiB':>13s}")
    medians = {}
    for name, runs in records.items():
        medians[name] = statistics.median(run["total_seconds"] for run in runs)
        last = runs[-1]
        print(f"{name:12s} {medians[name]:14.2f} {last['total_loss']:12.4f} {last['content_loss']:10.4f} "
              f"{last['style_loss']:12.4e} {max(run['peak_rss_mib'] for run in runs):13.0f}")
    seed_loss = records["seed script"][-1]["total_loss"]
    core_loss = records["nst_core"][-1]["total_loss"]
    print(f"\nspeed-up: {medians['seed script'] / medians['nst_core']:.2f}x   "
          f"final total loss difference: {100 * (core_loss - seed_loss) / seed_loss:+.2f}%")


if __name__ == "__main__":
    main()
