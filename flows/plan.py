"""The plan of a batch: output names, collisions, what is already done.

A pair counts as done when its output file exists and the done record,
written right after the image was saved, stores the same settings hash. The
record lives in ``<output-dir>/.nst/done/<pair_id>.json`` and holds
the output's size and modification time, so that a replaced or truncated image
is made again. This works for JPEG outputs too, which carry no PNG text.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Literal

from flows._files import write_atomic
from flows.manifest import Manifest
from nst_core.settings import TransferSettings

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

__all__ = [
    "OUTPUT_SUFFIXES",
    "STATE_DIR",
    "PlannedPair",
    "Plan",
    "OutputLockedError",
    "OutputLock",
    "default_output_dir",
    "make_plan",
    "remove_stale_temporaries",
    "write_done_record",
    "read_done_record",
]

logger = logging.getLogger(__name__)

#: Output formats that ``nst_core.save_image`` writes.
OUTPUT_SUFFIXES = (".png", ".jpg", ".jpeg")

#: Folder inside the output folder that holds the done records and the lock.
STATE_DIR = ".nst"


@dataclasses.dataclass(frozen=True)
class PlannedPair:
    """One pair with its output and what the run does with it.

    Attributes:
        pair_id: The output file's stem, unique within the batch.
        content: Absolute path of the content image.
        style: Absolute path of the style image.
        output: Absolute path of the stylised image.
        settings: The pair's transfer settings.
        settings_hash: Hash of the settings and the weights identity.
        location: Where the pair comes from in the manifest.
        action: ``"run"`` or ``"skip"`` (done earlier with the same settings).
        previous: The report row stored when the pair was done, for skipped pairs.
    """

    pair_id: str
    content: Path
    style: Path
    output: Path
    settings: TransferSettings
    settings_hash: str
    location: str
    action: Literal["run", "skip"]
    previous: dict[str, Any] | None = None


@dataclasses.dataclass
class Plan:
    """Every pair of a batch, in manifest order, and the problems found.

    Attributes:
        output_dir: Absolute path of the output folder.
        pairs: The planned pairs.
        problems: Problems of output names (collisions, paths outside the folder).
    """

    output_dir: Path
    pairs: list[PlannedPair]
    problems: list[str]

    @property
    def to_run(self) -> list[PlannedPair]:
        """Pairs that the run optimises."""
        return [pair for pair in self.pairs if pair.action == "run"]

    @property
    def to_skip(self) -> list[PlannedPair]:
        """Pairs already done with the same settings."""
        return [pair for pair in self.pairs if pair.action == "skip"]


def default_output_dir(manifest: Manifest) -> Path:
    """Return ``outputs/`` beside the manifest file, or in the working directory in folder mode."""
    if manifest.source is not None:
        return manifest.source.parent / "outputs"
    return Path.cwd() / "outputs"


def make_plan(
    manifest: Manifest,
    output_dir: str | os.PathLike[str],
    *,
    weights_identity: str,
    force: bool = False,
) -> Plan:
    """Name each pair's output, find collisions and decide what to run.

    The default output name is ``<content stem>__<style stem>.png``. When two
    pairs share the content and the style image, each gets the settings hash
    appended (``__<hash>``) so that they do not overwrite each other.

    Args:
        manifest: The loaded manifest; pairs with problems are already left out.
        output_dir: Folder that receives the images and the report.
        weights_identity: ``nst_core.weights_id(weights)``, part of every settings hash.
        force: Run every pair even if it is done. Defaults to False.
    """
    root = Path(output_dir).expanduser().resolve()
    problems: list[str] = []
    hashes = [pair.settings.settings_hash(weights_identity) for pair in manifest.pairs]
    shared = Counter((pair.content, pair.style) for pair in manifest.pairs)

    outputs: list[Path | None] = []
    for pair, settings_hash in zip(manifest.pairs, hashes):
        if pair.output is None:
            name = f"{pair.content.stem}__{pair.style.stem}"
            if shared[(pair.content, pair.style)] > 1:
                name = f"{name}__{settings_hash}"
            outputs.append(root / f"{name}.png")
        else:
            outputs.append(_checked_output(pair.output, root, pair.location, problems))

    for location, value in manifest.rejected_outputs:
        _checked_output(value, root, location, problems)
    _check_collisions(manifest, outputs, problems)

    planned = []
    for pair, settings_hash, output in zip(manifest.pairs, hashes, outputs):
        if output is None:
            continue
        previous = None if force else _previous_record(root, output, settings_hash)
        planned.append(
            PlannedPair(
                pair_id=output.stem,
                content=pair.content,
                style=pair.style,
                output=output,
                settings=pair.settings,
                settings_hash=settings_hash,
                location=pair.location,
                action="skip" if previous is not None else "run",
                previous=previous,
            )
        )
    return Plan(output_dir=root, pairs=planned, problems=problems)


def _checked_output(value: str, root: Path, location: str, problems: list[str]) -> Path | None:
    path = (root / Path(value).expanduser()).resolve()
    if not path.is_relative_to(root):
        problems.append(
            f"{location}: output '{value}' is outside the output folder {root}. "
            "Give a path relative to the output folder"
        )
        return None
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        problems.append(f"{location}: output '{value}' must end in {', '.join(OUTPUT_SUFFIXES)}")
        return None
    if path.relative_to(root).parts[0] == STATE_DIR:
        problems.append(f"{location}: output '{value}' is inside the reserved folder '{STATE_DIR}'")
        return None
    return path


def _check_collisions(manifest: Manifest, outputs: list[Path | None], problems: list[str]) -> None:
    by_output: dict[Path, list[str]] = defaultdict(list)
    by_stem: dict[str, list[tuple[str, Path]]] = defaultdict(list)
    for pair, output in zip(manifest.pairs, outputs):
        if output is not None:
            by_output[output].append(pair.location)
            by_stem[output.stem].append((pair.location, output))

    for output, locations in by_output.items():
        if len(locations) > 1:
            problems.append(
                f"{locations[0]}: {len(locations)} pairs write the same output '{output}' "
                f"({', '.join(locations)}). Give each an 'output' name or drop the repeated pair"
            )
    for stem, entries in by_stem.items():
        paths = {path for _, path in entries}
        if len(paths) > 1:
            locations = ", ".join(location for location, _ in entries)
            problems.append(
                f"{entries[0][0]}: outputs {', '.join(sorted(str(p) for p in paths))} share the name '{stem}' "
                f"({locations}), which must be unique because it names the pair in the report"
            )


def remove_stale_temporaries(plan: Plan) -> list[Path]:
    """Delete temporary files that a killed run left behind, and return their paths.

    Images, histories, done records and the report are written to a hidden
    temporary file and renamed into place. A run killed between the two steps
    leaves the temporary file; call this while holding the `OutputLock`, so
    that no running batch is writing them.
    """
    root = plan.output_dir
    patterns = [(root, ".report.csv.*.tmp"), (root / STATE_DIR / "done", ".*.json.*.tmp"), (root / "histories", ".*.tmp")]
    patterns += [(pair.output.parent, f".{pair.output.name}.*.partial") for pair in plan.pairs]
    removed = []
    for folder, pattern in patterns:
        for path in folder.glob(pattern):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


# --- done records -----------------------------------------------------------


def _done_path(root: Path, pair_id: str) -> Path:
    return root / STATE_DIR / "done" / f"{pair_id}.json"


def write_done_record(output_dir: str | os.PathLike[str], output: Path, settings_hash: str, row: dict[str, Any]) -> None:
    """Record that ``output`` was written with ``settings_hash``.

    Call this after the image is saved. The write is atomic, so a killed
    process leaves either the old record or the new one.

    Args:
        output_dir: The batch's output folder.
        output: The image just saved.
        settings_hash: The pair's settings hash.
        row: The pair's report row, reused for the row of a later skipped run.
    """
    root = Path(output_dir)
    stat = output.stat()
    record = {
        "settings_hash": settings_hash,
        "output": str(output.resolve().relative_to(root.resolve())),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "row": row,
    }
    text = json.dumps(record, indent=1, default=str)
    write_atomic(_done_path(root, output.stem), lambda file: file.write(text))


def read_done_record(output_dir: str | os.PathLike[str], pair_id: str) -> dict[str, Any] | None:
    """Return the done record of ``pair_id``, or ``None`` when there is none or it is unreadable."""
    path = _done_path(Path(output_dir), pair_id)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        logger.warning("Ignoring unreadable done record %s: %s", path, error)
        return None


def _previous_record(root: Path, output: Path, settings_hash: str) -> dict[str, Any] | None:
    record = read_done_record(root, output.stem)
    if record is None or record.get("settings_hash") != settings_hash:
        return None
    if record.get("output") != str(output.relative_to(root)):
        return None
    try:
        stat = output.stat()
    except OSError:
        return None
    if stat.st_size != record.get("size") or stat.st_mtime_ns != record.get("mtime_ns"):
        return None
    row = record.get("row")
    return row if isinstance(row, dict) else {}


# --- output-folder lock -----------------------------------------------------


class OutputLockedError(RuntimeError):
    """Another run writes into the same output folder."""


class OutputLock:
    """An exclusive lock on an output folder for the length of a run.

    The lock is an ``fcntl.flock`` on ``<output-dir>/.nst/lock``: the kernel
    drops it when the holding process exits, so a run killed with SIGKILL does
    not block the next one.

    NOTE: Without ``fcntl`` (Windows) the lock does nothing, and over NFS it
    holds only where the server supports ``flock``.
    """

    def __init__(self, output_dir: str | os.PathLike[str]) -> None:
        self.path = Path(output_dir) / STATE_DIR / "lock"
        self._file = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def acquire(self) -> OutputLock:
        """Take the lock and return this object, which keeps a lock it holds already.

        Raises:
            OutputLockedError: If another open lock file holds it, naming
                the holder's pid and host.
        """
        if self._file is not None:
            return self
        self._file = self._open_locked()
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        self._file.flush()
        return self

    def check(self) -> None:
        """Raise `OutputLockedError` if another run holds the lock, without taking it."""
        if self._file is not None:
            return
        stream = self._open_locked()
        if fcntl is not None:
            fcntl.flock(stream.fileno(), fcntl.LOCK_UN)
        stream.close()

    def _open_locked(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        stream = open(self.path, "a+", encoding="utf-8")
        if fcntl is None:
            return stream
        try:
            fcntl.flock(stream.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as error:
            stream.seek(0)
            holder = stream.read().strip() or "another process"
            stream.close()
            raise OutputLockedError(
                f"Output folder {self.path.parent.parent} is in use by {holder}. "
                "Wait for that run to finish or choose another --output-dir"
            ) from error
        return stream

    def __exit__(self, *exc_info: object) -> None:
        if self._file is not None:
            if fcntl is not None:
                fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None
