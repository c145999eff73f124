"""Tests of the contact sheet, the loss plots, ``nst report`` and the report CSV
as the review reads it.

The run under review is made for real: ``nst_core.transfer`` on small images
(64 px, 20 steps, the stand-in weights), written with the report's own writer.
"""

from __future__ import annotations

import csv
import html.parser
import io
import math
import os
import shutil
import urllib.parse
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from flows.cli import main as nst_main
from flows.report import PairRecord, ReportWriter, escape_cell, history_path, read_report, write_history
from flows.loss_curves import CurveCheck, draw_loss_curves, read_history
from flows.review import build_review, read_report_rows, relative_url
from nst_core import ImageError, TransferSettings, transfer

AWKWARD_STEM = "a b#c?ü &<x>'\""
INJECTED_ERROR = '<script>alert("x")</script> & "quotes"'


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def make_run(
    output_dir: Path,
    pairs: list[tuple[Path, Path]],
    weights: Path,
    settings: TransferSettings | None = None,
) -> list[PairRecord]:
    """Stylise each pair for real and write report.csv and histories as the pipeline does.

    A pair whose image cannot be used becomes a failed row.
    """
    settings = settings or TransferSettings(size=64, steps=20)
    records = []
    with ReportWriter(output_dir / "report.csv") as report:
        report.start()
        for content, style in pairs:
            pair_id = f"{content.stem}__{style.stem}"
            record = PairRecord(
                pair_id=pair_id,
                content=str(content),
                style=str(style),
                output=str(output_dir / f"{pair_id}.png"),
                status="failed",
                started_at=_now(),
                settings_hash=settings.settings_hash(),
                seed=settings.seed,
            )
            try:
                result = transfer(content, style, settings, weights=weights, device="cpu", output=record.output)
            except ImageError as error:
                record.error = str(error)
            else:
                history = history_path(output_dir, pair_id)
                write_history(history, result.history.to_rows())
                record.status = "done"
                record.history = history.relative_to(output_dir).as_posix()
                record.width, record.height, record.steps = result.width, result.height, result.steps
                record.content_loss, record.style_loss = result.content_loss, result.style_loss
                record.tv_loss, record.total_loss = result.tv_loss, result.total_loss
                record.total_seconds = result.timings.total
                record.device, record.worker = result.device, "test"
            record.finished_at = _now()
            report.add(record)
            records.append(record)
    return records


class _PageParser(html.parser.HTMLParser):
    """Collects the rows, images, links and scripts of a contact sheet."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, str]] = []
        self.images: list[dict[str, str]] = []
        self.links: list[str] = []
        self.scripts = 0
        self._in_body = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self.rows.append(values)
        elif tag == "img":
            self.images.append(values)
        elif tag == "a":
            self.links.append(values.get("href", ""))
        elif tag == "script":
            self.scripts += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "tbody":
            self._in_body = False


def parse_page(path: Path) -> tuple[_PageParser, str]:
    text = path.read_text(encoding="utf-8")
    parser = _PageParser()
    parser.feed(text)
    return parser, text


@pytest.fixture(scope="module")
def reviewed_run(tmp_path_factory, content_dir, style_dir, standin_weights) -> tuple[Path, list[PairRecord]]:
    """A real run of 2 x 2 pairs, one with an awkward file name and one whose content image is missing."""
    root = tmp_path_factory.mktemp("review")
    inputs = root / "inputs"
    inputs.mkdir()
    contents = sorted(content_dir.glob("*.png"))[:2]
    styles = sorted(style_dir.glob("*.jpg"))[:2]
    awkward = inputs / f"{AWKWARD_STEM}.png"
    shutil.copy(contents[0], awkward)
    pairs = [(content, style) for content in contents for style in styles]
    pairs += [(awkward, styles[0]), (inputs / "missing.jpg", styles[1])]
    output_dir = root / "run output"
    records = make_run(output_dir, pairs, standin_weights)
    return output_dir, records


def copy_run(run: Path, target: Path) -> Path:
    shutil.copytree(run, target)
    return target


def copy_run_from_elsewhere(run: Path, target: Path) -> Path:
    """Copy a run as if it came from another machine: its absolute paths to
    the output folder lead nowhere here."""
    copy_run(run, target)
    report = target / "report.csv"
    text = report.read_text(encoding="utf-8")
    report.write_text(text.replace(str(run), "/nonexistent/machine/run"), encoding="utf-8", newline="")
    return target


# --- the contact sheet ------------------------------------------------------


def test_contact_sheet_has_one_row_per_pair(reviewed_run, tmp_path):
    run, records = reviewed_run
    review = build_review(copy_run(run, tmp_path / "run"))
    page, _ = parse_page(review.html)

    assert len(page.rows) == len(records)
    assert [row.pair_id for row in review.rows] == [record.pair_id for record in records]
    assert review.counts() == {"done": len(records) - 1, "failed": 1}


def test_images_are_small_files_beside_the_page(reviewed_run, tmp_path):
    run = copy_run(reviewed_run[0], tmp_path / "run")
    review = build_review(run, thumbnail_size=96)
    page, _ = parse_page(review.html)

    assert page.images
    for image in page.images:
        source = image["src"]
        assert "://" not in source, source
        assert not source.startswith("/"), source
        path = run / urllib.parse.unquote(source)
        assert path.is_file(), source
        assert path.parent.name in ("thumbnails", "curves"), source
        assert path.stat().st_size < 40_000, source
    for thumbnail in (run / "thumbnails").glob("*.jpg"):
        with Image.open(thumbnail) as image:
            assert max(image.size) <= 96, thumbnail


def test_links_are_relative_and_percent_encoded(reviewed_run, tmp_path):
    run = copy_run(reviewed_run[0], tmp_path / "run")
    review = build_review(run)
    page, _ = parse_page(review.html)

    assert page.links
    for link in page.links:
        assert "://" not in link, link
        assert not link.startswith("/"), link
        for character in " #?\"'<>&":
            assert character not in link, link
        assert link.isascii(), link
        assert (run / urllib.parse.unquote(link)).resolve().is_file(), link
    awkward = [link for link in page.links if "a%20b%23c%3F%C3%BC" in link]
    assert len(awkward) >= 2, "the awkward content image and its output should both be linked"


def test_relative_url_encodes_awkward_characters(tmp_path):
    target = tmp_path / "sub dir" / "x#1?ü%.png"

    url = relative_url(target, tmp_path)

    assert url == "sub%20dir/x%231%3F%C3%BC%25.png"
    assert urllib.parse.unquote(url) == "sub dir/x#1?ü%.png"


def test_report_text_is_escaped(reviewed_run, tmp_path):
    run = copy_run(reviewed_run[0], tmp_path / "run")
    with open(run / "report.csv", "a", encoding="utf-8", newline="") as file:
        record = PairRecord(
            pair_id='"><img src=x onerror=alert(1)>',
            content="<b>content</b>.png",
            style="style & co.jpg",
            output="",
            status="failed",
            error=INJECTED_ERROR,
        )
        csv.writer(file).writerow([escape_cell(str(v)) if v is not None else "" for v in record.to_row().values()])

    review = build_review(run)
    page, text = parse_page(review.html)

    assert page.scripts == 1, "only the page's own sorting script may run"
    assert "<script>alert" not in text
    assert "<img src=x" not in text
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &quot;quotes&quot;" in text
    assert html_escape(AWKWARD_STEM) in text
    assert "<x>" not in text


def html_escape(text: str) -> str:
    import html

    return html.escape(text, quote=True)


def test_failed_row_shows_its_error(reviewed_run, tmp_path):
    run, records = reviewed_run
    failed = next(record for record in records if record.status == "failed")
    review = build_review(copy_run(run, tmp_path / "run"))
    _, text = parse_page(review.html)

    assert 'class="status-failed"' in text
    assert html_escape(failed.error) in text
    assert any("missing.jpg" in message for message in review.warnings)


def test_rows_carry_sort_keys(reviewed_run, tmp_path):
    run, records = reviewed_run
    review = build_review(copy_run(run, tmp_path / "run"))
    page, _ = parse_page(review.html)

    done = [row for row in page.rows if "status-done" in row["class"]]
    failed = [row for row in page.rows if "status-failed" in row["class"]]
    assert all(float(row["data-total"]) > 0 for row in done)
    assert all(float(row["data-time"]) > 0 for row in done)
    assert [row["data-total"] for row in failed] == [""]
    assert all(int(row["data-status"]) < int(other["data-status"]) for row in failed for other in done)


def test_last_row_of_a_pair_wins(reviewed_run, tmp_path):
    run, records = reviewed_run
    run = copy_run(run, tmp_path / "run")
    first = records[0]
    with open(run / "report.csv", "a", encoding="utf-8", newline="") as file:
        again = PairRecord.from_row(first.to_row(), status="failed", error="out of memory on retry", history="")
        csv.writer(file).writerow(["" if v is None else escape_cell(str(v)) for v in again.to_row().values()])

    review = build_review(run)

    assert len(review.rows) == len(records)
    assert review.rows[0].pair_id == first.pair_id
    assert review.rows[0].status == "failed"
    assert review.rows[0].text("error") == "out of memory on retry"


def test_missing_images_get_a_placeholder(reviewed_run, tmp_path):
    run = copy_run_from_elsewhere(reviewed_run[0], tmp_path / "run")
    for output in run.glob("*.png"):
        output.unlink()

    review = build_review(run)
    page, _ = parse_page(review.html)

    missing = [image for image in page.images if image.get("class") == "missing"]
    # Every output is gone, and so is the content image of the failed pair.
    assert len(missing) == len(review.rows) + 1
    assert all(image["src"] == "thumbnails/missing.png" for image in missing)
    assert (run / "thumbnails" / "missing.png").is_file()
    assert sum("output image" in message for message in review.warnings) == len(review.rows) - 1


def test_warning_summary_counts_the_rest(reviewed_run, tmp_path):
    run = copy_run_from_elsewhere(reviewed_run[0], tmp_path / "run")
    for output in run.glob("*.png"):
        output.unlink()
    review = build_review(run)

    summary = review.warning_summary(limit=2)

    assert len(review.warnings) > 3
    assert summary[:2] == review.warnings[:2]
    assert summary[2] == f"... and {len(review.warnings) - 2} more warnings, listed in {review.html}"
    assert review.warning_summary(limit=len(review.warnings)) == review.warnings


def test_moved_output_folder_still_shows_outputs(reviewed_run, tmp_path):
    moved = copy_run_from_elsewhere(reviewed_run[0], tmp_path / "moved")

    review = build_review(moved)
    page, _ = parse_page(review.html)

    assert not any("output image" in message for message in review.warnings)
    outputs = [link for link in page.links if link.endswith("__shipwreck.png") or link.endswith("__starry_night.png")]
    assert len(outputs) == len(review.rows) - 1


def test_unreadable_image_gets_a_placeholder(reviewed_run, tmp_path):
    run = copy_run_from_elsewhere(reviewed_run[0], tmp_path / "run")
    victim = review_output(run, build_review(run))
    victim.write_bytes(b"not a png")

    review = build_review(run)

    assert any(victim.name in message for message in review.warnings)


def review_output(run: Path, review) -> Path:
    row = next(row for row in review.rows if row.status == "done")
    return run / Path(row.text("output")).name


def test_unchanged_thumbnails_are_reused_and_stale_ones_removed(reviewed_run, tmp_path):
    run = copy_run_from_elsewhere(reviewed_run[0], tmp_path / "run")
    build_review(run)
    before = {path.name: path.stat().st_mtime_ns for path in (run / "thumbnails").glob("*.jpg")}
    victim = review_output(run, build_review(run))
    with Image.open(victim) as image:
        image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(victim)

    build_review(run)
    after = {path.name: path.stat().st_mtime_ns for path in (run / "thumbnails").glob("*.jpg")}

    assert len(after) == len(before)
    unchanged = set(before) & set(after)
    assert len(unchanged) == len(before) - 1
    assert all(before[name] == after[name] for name in unchanged)


# --- loss curves ------------------------------------------------------------


def test_loss_curves_png_has_a_curve_per_pair(reviewed_run, tmp_path):
    run, records = reviewed_run
    review = build_review(copy_run(run, tmp_path / "run"))
    with_history = [record for record in records if record.history]

    with Image.open(review.plot) as image:
        assert image.format == "PNG"
        assert image.size == (1500, 550)
        assert len(image.convert("L").getcolors(maxcolors=1 << 16) or []) > 10
    histories = {record.pair_id: read_history(run / record.history) for record in with_history}
    figure = draw_loss_curves(histories, {}, title="test")
    for axes in figure.axes[:3]:
        assert axes.get_yscale() == "log"
        assert [line.get_label() for line in axes.lines] == [record.pair_id for record in with_history]


def test_each_row_shows_its_own_curve(reviewed_run, tmp_path):
    run, records = reviewed_run
    review = build_review(copy_run(run, tmp_path / "run"))
    page, _ = parse_page(review.html)

    curves = [image for image in page.images if image.get("class") == "curve"]
    assert len(curves) == sum(1 for record in records if record.history)
    assert len({image["src"] for image in curves}) == len(curves)
    for image in curves:
        with Image.open(review.html.parent / urllib.parse.unquote(image["src"])) as picture:
            assert picture.size == (180, 90)


def test_history_matches_transfer_result(reviewed_run):
    run, records = reviewed_run
    record = next(record for record in records if record.history)

    history = read_history(run / record.history)

    assert len(history.total) == record.steps
    assert history.steps[0] == 1
    assert history.total[-1] == pytest.approx(record.total_loss, rel=1e-6)


def test_converging_run_is_not_flagged(reviewed_run, tmp_path):
    review = build_review(copy_run(reviewed_run[0], tmp_path / "run"))

    assert review.flags == {}


def test_diverging_run_is_flagged_on_the_page(content_dir, style_dir, standin_weights, tmp_path):
    # A learning rate far above the default makes Adam overshoot, so the loss
    # turns up again after its minimum.
    settings = TransferSettings(size=64, steps=20, learning_rate=1.0, style_weight=1e7)
    content = sorted(content_dir.glob("*.png"))[0]
    style = sorted(style_dir.glob("*.jpg"))[0]
    make_run(tmp_path, [(content, style)], standin_weights, settings)
    history = read_history(next((tmp_path / "histories").glob("*.csv")))
    assert CurveCheck().flag(history.total) is not None, f"expected a flagged curve, got {history.total}"

    review = build_review(tmp_path)
    _, text = parse_page(review.html)

    assert list(review.flags) == [f"{content.stem}__{style.stem}"]
    assert 'class="status-done flagged"' in text
    assert html_escape(review.flags[f"{content.stem}__{style.stem}"]) in text


# --- nst report -------------------------------------------------------------


def test_nst_report_rebuilds_from_the_files(reviewed_run, tmp_path, capsys):
    run = copy_run(reviewed_run[0], tmp_path / "run")
    for name in ("report.html", "loss_curves.png"):
        (run / name).unlink(missing_ok=True)

    code = nst_main(["report", str(run)])

    assert code == 0
    assert (run / "report.html").is_file()
    assert (run / "loss_curves.png").is_file()
    assert str((run / "report.html").resolve()) in capsys.readouterr().out


def test_nst_report_after_interrupted_run(reviewed_run, tmp_path, capsys):
    run, records = reviewed_run
    run = copy_run(run, tmp_path / "run")
    report = run / "report.csv"
    data = report.read_bytes()
    last_line_start = data.rstrip(b"\r\n").rfind(b"\n") + 1
    report.write_bytes(data[: last_line_start + (len(data) - last_line_start) // 2])

    code = nst_main(["report", str(run)])
    page, _ = parse_page(run / "report.html")

    assert code == 0
    assert len(page.rows) == len(records) - 1
    assert "skipped the last line" in capsys.readouterr().err


# Where the cut falls: the bytes it follows, or None for 3 bytes before the end.
CUTS = {
    "inside a quoted cell": b'line "',
    "after a line break inside a quoted cell": b"line one\n",
    "inside a UTF-8 character": "ü".encode()[:1],
    "after the last comma": None,
}


@pytest.mark.parametrize("cut", list(CUTS))
def test_report_rows_survive_any_cut(tmp_path, cut):
    records = [
        PairRecord(pair_id="a__b", content="a.png", style="b.jpg", output="a__b.png", status="done", total_loss=1.5),
        PairRecord(pair_id="c__d", content="c, ü.png", style="d.jpg", output="c__d.png", status="failed",
                   error='line one\nline "two"'),
    ]  # fmt: skip
    with ReportWriter(tmp_path / "report.csv") as writer:
        writer.start(records)
    data = (tmp_path / "report.csv").read_bytes()
    marker = CUTS[cut]
    position = data.index(marker) + len(marker) if marker is not None else len(data) - 3
    (tmp_path / "report.csv").write_bytes(data[:position])

    rows, warnings = read_report_rows(tmp_path / "report.csv")

    assert [row.pair_id for row in rows] == ["a__b"]
    assert rows[0].number("total_loss") == 1.5
    assert len(warnings) == 1


def test_written_files_follow_the_umask(reviewed_run, tmp_path):
    run = copy_run(reviewed_run[0], tmp_path / "run")
    previous = os.umask(0o027)
    try:
        build_review(run)
    finally:
        os.umask(previous)

    written = [run / "report.html", run / "loss_curves.png", *(run / "thumbnails").iterdir(), *(run / "curves").iterdir()]
    assert len(written) > 4
    for path in written:
        assert path.stat().st_mode & 0o777 == 0o640, path


def test_report_without_rows_gives_an_empty_sheet(tmp_path):
    with ReportWriter(tmp_path / "report.csv") as writer:
        writer.start()

    review = build_review(tmp_path)
    page, _ = parse_page(review.html)

    assert page.rows == []
    assert review.warnings == []
    assert review.plot.is_file()


def test_nst_report_rejects_folder_without_report(tmp_path, capsys):
    code = nst_main(["report", str(tmp_path)])

    assert code == 2
    error = capsys.readouterr().err
    assert "report.csv" in error
    assert str(tmp_path) in error


def test_nst_report_rejects_other_csv(tmp_path, capsys):
    (tmp_path / "report.csv").write_text("name,value\nx,1\n", encoding="utf-8")

    code = nst_main(["report", str(tmp_path)])

    assert code == 2
    assert "does not have the report columns" in capsys.readouterr().err


# --- report.csv: spreadsheet safety and awkward paths -----------------------


@pytest.mark.parametrize("first", ["=", "+", "-", "@", "\t", "\r"])
def test_formula_like_text_gets_a_leading_quote(tmp_path, first):
    text = f"{first}SUM(A1:A9) x.png"
    record = PairRecord(pair_id=f"{first}id", content=text, style="s.jpg", output="o.png", status="failed",
                        error=f"{first}error", content_loss=-1.5)  # fmt: skip
    with ReportWriter(tmp_path / "report.csv") as writer:
        writer.start()
        writer.add(record)

    with open(tmp_path / "report.csv", encoding="utf-8", newline="") as file:
        raw = list(csv.DictReader(file))[0]
    frame = read_report(tmp_path / "report.csv")
    rows, _ = read_report_rows(tmp_path / "report.csv")

    assert raw["content"] == "'" + text
    assert raw["pair_id"] == f"'{first}id"
    assert raw["error"] == f"'{first}error"
    assert raw["content_loss"] == "-1.5", "number cells are never quoted"
    assert frame.loc[0, "content"] == text
    assert frame.loc[0, "error"] == f"{first}error"
    assert frame.loc[0, "content_loss"] == -1.5
    assert rows[0].text("content") == text
    assert rows[0].pair_id == f"{first}id"


def test_plain_text_is_written_unchanged(tmp_path):
    record = PairRecord(pair_id="x__y", content="'quoted.png", style="it's.jpg", output="o.png", status="done")
    with ReportWriter(tmp_path / "report.csv") as writer:
        writer.start([record])

    with open(tmp_path / "report.csv", encoding="utf-8", newline="") as file:
        raw = list(csv.DictReader(file))[0]

    assert raw["content"] == "'quoted.png"
    assert read_report(tmp_path / "report.csv").loc[0, "content"] == "'quoted.png"


AWKWARD_PATHS = [
    "/data/my photos/holiday 1.jpg",
    "/data/a,b,c/comma, here.png",
    '/data/"quoted" name.png',
    "/data/it's.png",
    "/données/naïve café/東京.jpg",
    '=HYPERLINK("x").jpg',
    '/data/=HYPERLINK("x").jpg',
    "/data/line\nbreak.png",
]


def test_awkward_paths_survive_a_pandas_round_trip(tmp_path):
    records = [
        PairRecord(pair_id=f"pair{index}", content=path, style=path, output=path, status="done", total_loss=float(index))
        for index, path in enumerate(AWKWARD_PATHS)
    ]
    with ReportWriter(tmp_path / "report.csv") as writer:
        writer.start(records)

    frame = read_report(tmp_path / "report.csv")
    raw = pd.read_csv(tmp_path / "report.csv", dtype=str, keep_default_na=False, encoding="utf-8")
    rows, warnings = read_report_rows(tmp_path / "report.csv")

    assert list(frame["content"]) == AWKWARD_PATHS
    assert list(frame["output"]) == AWKWARD_PATHS
    assert list(frame["total_loss"]) == [float(index) for index in range(len(AWKWARD_PATHS))]
    assert raw.loc[AWKWARD_PATHS.index('=HYPERLINK("x").jpg'), "content"] == '\'=HYPERLINK("x").jpg'
    assert [row.text("content") for row in rows] == AWKWARD_PATHS
    assert warnings == []


def test_report_rows_read_nan_losses_as_missing(tmp_path):
    record = PairRecord(pair_id="x__y", content="x.png", style="y.jpg", output="o.png", status="failed",
                        total_loss=math.nan, content_loss=math.inf)  # fmt: skip
    with ReportWriter(tmp_path / "report.csv") as writer:
        writer.start([record])

    rows, _ = read_report_rows(tmp_path / "report.csv")

    assert rows[0].number("total_loss") is None
    assert rows[0].number("content_loss") is None


def test_csv_module_reads_what_the_review_reads(reviewed_run):
    run, records = reviewed_run
    text = (run / "report.csv").read_text(encoding="utf-8")

    raw = list(csv.DictReader(io.StringIO(text, newline="")))
    rows, warnings = read_report_rows(run / "report.csv")

    assert warnings == []
    assert [row["pair_id"] for row in raw] == [row.pair_id for row in rows]
