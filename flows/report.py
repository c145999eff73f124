"""The batch report: ``report.csv``, loss histories and Prefect artifacts.

``<output-dir>/report.csv`` gets one row per pair, appended and flushed as each
pair finishes, so a crash loses no finished row. Text cells that a spreadsheet
would read as a formula (leading ``=``, ``+``, ``-``, ``@``, tab or carriage
return) get a leading ``'``, and `read_report` removes it again.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from flows._files import write_atomic

__all__ = [
    "COLUMNS",
    "TEXT_COLUMNS",
    "HISTORY_COLUMNS",
    "PairRecord",
    "ReportWriter",
    "escape_cell",
    "unescape_cell",
    "read_report",
    "write_history",
    "history_path",
    "publish_artifacts",
    "summary_markdown",
]

logger = logging.getLogger(__name__)

COLUMNS = (
    "pair_id",
    "content",
    "style",
    "output",
    "status",
    "error",
    "width",
    "height",
    "steps",
    "content_loss",
    "style_loss",
    "tv_loss",
    "total_loss",
    "load_seconds",
    "features_seconds",
    "optimize_seconds",
    "save_seconds",
    "total_seconds",
    "device",
    "worker",
    "seed",
    "settings_hash",
    "started_at",
    "finished_at",
    "history",
)

#: Columns written as text, and so escaped against formula injection.
TEXT_COLUMNS = frozenset(
    {"pair_id", "content", "style", "output", "status", "error", "device", "worker", "settings_hash",
     "started_at", "finished_at", "history"}
)

HISTORY_COLUMNS = ("step", "total_loss", "content_loss", "style_loss", "tv_loss")

_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")

Status = Literal["done", "failed", "skipped"]


@dataclasses.dataclass
class PairRecord:
    """One row of the report: the outcome of one pair.

    Field names and order are those of `COLUMNS`. Numbers are ``None`` where
    they are unknown, such as the losses of a failed pair. Times are seconds,
    ``started_at``/``finished_at`` ISO 8601 UTC, and ``history`` the loss
    history file relative to the output folder.
    """

    pair_id: str
    content: str
    style: str
    output: str
    status: Status
    error: str = ""
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    content_loss: float | None = None
    style_loss: float | None = None
    tv_loss: float | None = None
    total_loss: float | None = None
    load_seconds: float | None = None
    features_seconds: float | None = None
    optimize_seconds: float | None = None
    save_seconds: float | None = None
    total_seconds: float | None = None
    device: str = ""
    worker: str = ""
    seed: int | None = None
    settings_hash: str = ""
    started_at: str = ""
    finished_at: str = ""
    history: str = ""

    def to_row(self) -> dict[str, Any]:
        """Return the record as a mapping of `COLUMNS` to plain values."""
        return dataclasses.asdict(self)

    @classmethod
    def from_row(cls, row: dict[str, Any], **changes: Any) -> PairRecord:
        """Build a record from a stored row, ignoring unknown keys, then apply ``changes``."""
        known = {name: row[name] for name in COLUMNS if name in row}
        known.update(changes)
        return cls(**known)


def escape_cell(value: str) -> str:
    """Prefix ``'`` to text that a spreadsheet would evaluate as a formula."""
    if value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def unescape_cell(value: str) -> str:
    """Undo `escape_cell`."""
    if value.startswith("'") and value[1:].startswith(_FORMULA_STARTS):
        return value[1:]
    return value


def _cell(name: str, value: Any) -> Any:
    if value is None:
        return ""
    if name in TEXT_COLUMNS:
        return escape_cell(str(value))
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class ReportWriter:
    """Writes ``report.csv`` row by row.

    `start` replaces any earlier report with the header and the rows of pairs
    that this run skips, atomically. Each `add` appends one row and flushes it
    to disk.

    Args:
        path: The report file, usually ``<output-dir>/report.csv``.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._file = None
        self._writer = None

    def start(self, records: Iterable[PairRecord] = ()) -> None:
        """Write the header and ``records`` to a fresh report, then open it for appending."""

        def write_rows(file) -> None:
            writer = csv.writer(file)
            writer.writerow(COLUMNS)
            for record in records:
                writer.writerow(_row_cells(record))

        write_atomic(self.path, write_rows, newline="")
        self._file = open(self.path, "a", encoding="utf-8", newline="")
        self._writer = csv.writer(self._file)

    def add(self, record: PairRecord) -> None:
        """Append one row and flush it to disk."""
        if self._writer is None:
            raise RuntimeError("ReportWriter.add called before start()")
        self._writer.writerow(_row_cells(record))
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        """Close the report file."""
        if self._file is not None:
            self._file.close()
            self._file = None
            self._writer = None

    def __enter__(self) -> ReportWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _row_cells(record: PairRecord) -> list[Any]:
    row = record.to_row()
    return [_cell(name, row[name]) for name in COLUMNS]


def read_report(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a report written by `ReportWriter`.

    Text columns come back as strings with the formula escaping removed and
    empty cells as ``""``. Numeric columns are floats with ``NaN`` where a
    value is missing.

    Args:
        path: The ``report.csv`` file.
    """
    frame = pd.read_csv(
        path,
        dtype={name: str for name in TEXT_COLUMNS},
        keep_default_na=False,
        na_values={name: [""] for name in COLUMNS if name not in TEXT_COLUMNS},
        encoding="utf-8",
    )
    for name in COLUMNS:
        if name in TEXT_COLUMNS:
            frame[name] = frame[name].map(unescape_cell)
        else:
            frame[name] = pd.to_numeric(frame[name], errors="coerce")
    return frame


def history_path(output_dir: str | os.PathLike[str], pair_id: str) -> Path:
    """Return the loss-history file of ``pair_id``: ``<output-dir>/histories/<pair_id>.csv``."""
    return Path(output_dir) / "histories" / f"{pair_id}.csv"


def write_history(path: str | os.PathLike[str], rows: Sequence[dict[str, Any]]) -> None:
    """Write a loss history atomically, one row per optimiser step.

    Args:
        path: The history file.
        rows: Mappings with the keys of `HISTORY_COLUMNS`, as from ``LossHistory.to_rows()``.
    """

    def write_rows(file) -> None:
        writer = csv.DictWriter(file, fieldnames=HISTORY_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)

    write_atomic(Path(path), write_rows, newline="")


# --- Prefect artifacts ------------------------------------------------------


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def summary_markdown(records: Sequence[PairRecord], elapsed_seconds: float, output_dir: Path) -> str:
    """Return a short markdown summary: counts, total time and each failure."""
    counts = Counter(record.status for record in records)
    lines = [
        "# Style-transfer batch",
        "",
        f"- Output folder: `{output_dir}`",
        f"- Pairs: {len(records)} (done {counts['done']}, skipped {counts['skipped']}, failed {counts['failed']})",
        f"- Wall time: {elapsed_seconds:.1f} s",
    ]
    failed = [record for record in records if record.status == "failed"]
    if failed:
        lines += ["", "## Failures", "", "| pair | error |", "| --- | --- |"]
        for record in failed:
            message = record.error.replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {record.pair_id} | {message} |")
    return "\n".join(lines) + "\n"


def publish_artifacts(records: Sequence[PairRecord], elapsed_seconds: float, output_dir: Path) -> None:
    """Create the Prefect table artifact of every row and the markdown summary.

    Must run inside a flow run. NaN and infinite numbers become ``None``
    because the artifact is stored as JSON.
    """
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    table = [{name: _json_safe(value) for name, value in record.to_row().items()} for record in records]
    create_table_artifact(
        table=table,
        key="nst-batch-report",
        description=f"One row per pair, as in {output_dir / 'report.csv'}",
    )
    create_markdown_artifact(
        markdown=summary_markdown(records, elapsed_seconds, output_dir),
        key="nst-batch-summary",
        description="Counts, wall time and failures of the batch",
    )
