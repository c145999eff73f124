"""The report file: row order, formula escaping and the reader."""

from __future__ import annotations

import csv
import os
import math
from pathlib import Path

from flows.report import (
    COLUMNS,
    PairRecord,
    ReportWriter,
    escape_cell,
    read_report,
    summary_markdown,
    unescape_cell,
    write_history,
)


def record(**changes) -> PairRecord:
    values = dict(pair_id="astronaut__shipwreck", content="/in/a.png", style="/in/s.jpg", output="/out/a.png",
                  status="done", width=64, height=48, steps=5, total_loss=1.25, seed=0)
    values.update(changes)
    return PairRecord(**values)


def test_columns_are_in_contract_order(tmp_path: Path) -> None:
    path = tmp_path / "report.csv"
    with ReportWriter(path) as writer:
        writer.start()

    with path.open(encoding="utf-8", newline="") as file:
        header = next(csv.reader(file))

    assert tuple(header) == COLUMNS
    assert tuple(PairRecord.__dataclass_fields__) == COLUMNS


def test_each_row_is_on_disk_before_close(tmp_path: Path) -> None:
    path = tmp_path / "report.csv"
    writer = ReportWriter(path)
    writer.start([record(pair_id="skipped", status="skipped")])
    writer.add(record())

    rows = list(csv.DictReader(path.open(encoding="utf-8", newline="")))
    writer.close()

    assert [row["pair_id"] for row in rows] == ["skipped", "astronaut__shipwreck"]


def test_start_replaces_an_earlier_report(tmp_path: Path) -> None:
    path = tmp_path / "report.csv"
    with ReportWriter(path) as writer:
        writer.start()
        writer.add(record(pair_id="old"))
    with ReportWriter(path) as writer:
        writer.start([record(pair_id="new", status="skipped")])

    assert read_report(path)["pair_id"].tolist() == ["new"]


def test_formula_text_is_escaped_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "report.csv"
    dangerous = ["=HYPERLINK(\"x\")", "+1", "-cmd", "@SUM(A1)", "\tlead", "\rlead"]
    with ReportWriter(path) as writer:
        writer.start()
        for index, text in enumerate(dangerous):
            writer.add(record(pair_id=f"p{index}", error=text, content_loss=-1.5, status="failed"))

    raw = list(csv.DictReader(path.open(encoding="utf-8", newline="")))
    frame = read_report(path)

    assert [row["error"] for row in raw] == ["'" + text for text in dangerous]
    assert [row["content_loss"] for row in raw] == ["-1.5"] * len(dangerous)
    assert frame["error"].tolist() == dangerous
    assert frame["content_loss"].tolist() == [-1.5] * len(dangerous)


def test_plain_quote_survives_round_trip() -> None:
    for text in ["'quoted'", "''=x", "plain", ""]:
        assert unescape_cell(escape_cell(text)) == text


def test_empty_cells_read_as_nan_or_empty(tmp_path: Path) -> None:
    path = tmp_path / "report.csv"
    with ReportWriter(path) as writer:
        writer.start()
        writer.add(PairRecord(pair_id="bad", content="c", style="s", output="o", status="failed", error="boom"))

    frame = read_report(path)

    assert math.isnan(frame.loc[0, "total_loss"])
    assert frame.loc[0, "history"] == ""
    assert frame.loc[0, "worker"] == ""


def test_history_has_one_row_per_step(tmp_path: Path) -> None:
    path = tmp_path / "histories" / "a.csv"
    rows = [dict(step=step, total_loss=1.0 / step, content_loss=0.5, style_loss=0.25, tv_loss=0.0) for step in (1, 2, 3)]

    write_history(path, rows)

    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "step,total_loss,content_loss,style_loss,tv_loss"
    assert len(lines) == 4


def test_summary_lists_counts_and_failures() -> None:
    records = [record(), record(pair_id="b", status="skipped"), record(pair_id="c", status="failed", error="a|b")]

    text = summary_markdown(records, 12.5, Path("/out"))

    assert "Pairs: 3 (done 1, skipped 1, failed 1)" in text
    assert "Wall time: 12.5 s" in text
    assert "| c | a\\|b |" in text


def test_files_follow_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        with ReportWriter(tmp_path / "report.csv") as writer:
            writer.start()
        write_history(tmp_path / "histories" / "a.csv", [])
    finally:
        os.umask(previous)

    assert (tmp_path / "report.csv").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "histories" / "a.csv").stat().st_mode & 0o777 == 0o644
