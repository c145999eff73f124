"""The morning review of a run: contact sheet, thumbnails and loss curves.

Everything here is rebuilt from the run's own records, ``report.csv`` and
``histories/<pair_id>.csv`` in the output folder, so a review can be made again
after an interrupted run or on another machine. The files written are:

- ``report.html``: the contact sheet, one row per pair, which opens from the
  file system with no server and no network;
- ``thumbnails/``: small JPEG copies of the content, style and output images;
- ``curves/``: one small loss-curve PNG per pair, shown in its row;
- ``loss_curves.png``: total, content and style loss of every pair.

A loss curve is flagged when the run did not converge well, by the rule of
``flows.loss_curves.CurveCheck``, which the page states.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import html
import io
import logging
import math
import os
import re
import tempfile
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path

from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageOps

from flows.loss_curves import CurveCheck, LossCurves, draw_loss_curves, draw_pair_curve, read_history
from flows.report import COLUMNS, TEXT_COLUMNS, unescape_cell

__all__ = [
    "ReviewRow",
    "Review",
    "read_report_rows",
    "relative_url",
    "build_review",
]

logger = logging.getLogger(__name__)

#: Number columns of ``report.csv`` that hold whole numbers.
_INT_COLUMNS = ("width", "height", "steps", "seed")

HTML_NAME = "report.html"
PLOT_NAME = "loss_curves.png"
THUMBNAIL_DIR = "thumbnails"
CURVE_DIR = "curves"

#: Side length in pixels that thumbnails fit into.
DEFAULT_THUMBNAIL_SIZE = 160

#: Names of the generated files, so that stale ones can be removed safely.
_GENERATED_NAME = re.compile(r"^[0-9a-f]{20}\.(jpg|png)$")
_MISSING_NAME = "missing.png"


# --- reading the run's records ----------------------------------------------


@dataclasses.dataclass(frozen=True)
class ReviewRow:
    """One pair as the contact sheet shows it: the last report row of its pair.

    Attributes:
        line: Line of ``report.csv`` on which the row ends (the header is line 1).
        values: Every column of the row. Text columns are strings with the
            spreadsheet quote removed, number columns are ``int`` or ``float``,
            or ``None`` where the cell is empty or not a number.
    """

    line: int
    values: dict[str, object]

    @property
    def pair_id(self) -> str:
        """Identifier of the pair, the output file's stem."""
        return str(self.values["pair_id"])

    @property
    def status(self) -> str:
        """``done``, ``failed`` or ``skipped``."""
        return str(self.values["status"])

    def text(self, column: str) -> str:
        """Return a text column, empty when absent."""
        value = self.values.get(column)
        return "" if value is None else str(value)

    def number(self, column: str) -> float | None:
        """Return a number column, ``None`` when empty or not finite."""
        value = self.values.get(column)
        if isinstance(value, (int, float)) and math.isfinite(value):
            return float(value)
        return None


def read_report_rows(path: str | os.PathLike[str]) -> tuple[list[ReviewRow], list[str]]:
    """Read ``report.csv`` into one row per pair, tolerating a cut-off file.

    A run that was killed can leave a last line without its line break, or a
    row with missing cells. Such rows are skipped with a warning, and so are
    rows whose bytes are not valid UTF-8. When a pair has several rows (a
    resumed run appends), the last one wins; pairs keep the order in which
    they first appear.

    Args:
        path: The report file.

    Returns:
        The rows, and one warning message per skipped line.

    Raises:
        FileNotFoundError: When the report does not exist.
        ValueError: When the header is not the report's header.
    """
    path = Path(path)
    raw = path.read_bytes()
    warnings: list[str] = []
    reader = csv.reader(io.StringIO(raw.decode("utf-8", errors="replace"), newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise ValueError(f"report {path} is empty; run the batch first or pick its output folder") from None
    header = [name.lstrip("\ufeff") for name in header]
    if tuple(header) != COLUMNS:
        raise ValueError(
            f"report {path} does not have the report columns. Expected {', '.join(COLUMNS)}; "
            f"got {', '.join(header)}"
        )
    records = [(reader.line_num, cells) for cells in reader if cells]

    # A row is complete only when its line break was written. Without one at
    # the end of the file, the last row was cut off, possibly inside a quoted
    # cell that spans lines.
    if records and not raw.endswith(b"\n"):
        line, _ = records.pop()
        warnings.append(
            f"{path}: skipped the last line ({line}): it has no line break, so the run was interrupted "
            "while writing it"
        )

    rows: dict[str, ReviewRow] = {}
    for line, cells in records:
        if len(cells) != len(COLUMNS):
            warnings.append(
                f"{path}: skipped line {line}: expected {len(COLUMNS)} cells, got {len(cells)} "
                "(the run was probably interrupted while writing it)"
            )
            continue
        if any("\ufffd" in cell for cell in cells):
            warnings.append(f"{path}: skipped line {line}: it is not valid UTF-8")
            continue
        row = ReviewRow(line=line, values=_convert_cells(cells))
        rows[row.pair_id] = row
    return list(rows.values()), warnings


def _convert_cells(cells: Sequence[str]) -> dict[str, object]:
    values: dict[str, object] = {}
    for column, cell in zip(COLUMNS, cells):
        if column in TEXT_COLUMNS:
            values[column] = unescape_cell(cell)
        else:
            values[column] = _parse_number(cell, int if column in _INT_COLUMNS else float)
    return values


def _parse_number(cell: str, kind: type) -> int | float | None:
    text = cell.strip()
    if not text:
        return None
    try:
        number = float(text)
    except ValueError:
        return None
    if kind is int and number.is_integer():
        return int(number)
    return number


# --- thumbnails --------------------------------------------------------------


def _resolve_image(text: str, output_dir: Path, *, is_output: bool) -> Path | None:
    """Find an image named in the report, or return ``None`` when it is missing.

    Relative paths are tried against the output folder, then the working
    folder. An output image is also looked for by its name in the output
    folder, so a review still finds it after the folder was moved.
    """
    if not text:
        return None
    path = Path(text)
    candidates = [path] if path.is_absolute() else [output_dir / path, Path.cwd() / path]
    if is_output:
        candidates.append(output_dir / path.name)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    return None


def _digest(*parts: object) -> str:
    return hashlib.sha256("\0".join(str(part) for part in parts).encode()).hexdigest()[:20]


def _make_thumbnail(source: Path, folder: Path, size: int) -> Path:
    """Write a JPEG of ``source`` that fits in ``size`` x ``size`` pixels.

    The name hashes the source's path, modification time and size, so an
    unchanged source reuses its thumbnail.

    Raises:
        OSError: When the image cannot be read or decoded.
        ValueError: When Pillow rejects the image, such as a decompression bomb.
    """
    stat = source.stat()
    target = folder / f"{_digest(source.resolve(), stat.st_mtime_ns, stat.st_size, size)}.jpg"
    if target.is_file():
        return target
    try:
        with Image.open(source) as image:
            image.draft("RGB", (size, size))
            image = ImageOps.exif_transpose(image)
            image.thumbnail((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0)
            rgb = image.convert("RGB")
            _replace_atomically(target, lambda temporary: rgb.save(temporary, format="JPEG", quality=85))
    except Image.DecompressionBombError as error:
        raise ValueError(str(error)) from error
    return target


def _make_placeholder(folder: Path, size: int) -> Path:
    """Write the grey 'image not found' picture shown in place of a missing image."""
    target = folder / _MISSING_NAME
    image = Image.new("RGB", (size, size * 3 // 4), (225, 225, 225))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, image.width - 1, image.height - 1), outline=(160, 160, 160))
    draw.text((image.width // 2, image.height // 2), "image not found", fill=(90, 90, 90), anchor="mm")
    _replace_atomically(target, lambda temporary: image.save(temporary, format="PNG"))
    return target


def _replace_atomically(target: Path, write: Callable[[str], None]) -> None:
    """Call ``write`` with a temporary path beside ``target``, then rename it over ``target``.

    A reader sees the old file or the new one, never a part. The file gets the
    usual ``0o666 & ~umask`` permissions, not the ``0o600`` of ``mkstemp``, so
    a shared output folder stays readable to everyone it was before.
    """
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=target.suffix)
    os.close(handle)
    try:
        write(temporary)
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _umask() -> int:
    # The umask can only be read by setting it, so it is set back at once.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# --- the contact sheet -------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Review:
    """Files written by :func:`build_review`, and the rows and warnings behind them.

    Attributes:
        html: The contact sheet.
        plot: The plot of every pair's loss curves.
        rows: One row per pair, as shown on the contact sheet.
        flags: Why each flagged pair's curve is flagged, by pair id.
        warnings: Lines skipped, histories and images not found.
    """

    html: Path
    plot: Path
    rows: list[ReviewRow]
    flags: dict[str, str]
    warnings: list[str]

    def counts(self) -> dict[str, int]:
        """Return the number of pairs per status."""
        counts: dict[str, int] = {}
        for row in self.rows:
            counts[row.status] = counts.get(row.status, 0) + 1
        return counts

    def warning_summary(self, limit: int = 20) -> list[str]:
        """Return the first ``limit`` warnings, and one line counting the rest.

        A folder copied without its images gives one warning per image, so
        callers that log or print warnings show this instead of all of them.
        The page lists every warning.
        """
        if len(self.warnings) <= limit:
            return list(self.warnings)
        rest = len(self.warnings) - limit
        return [*self.warnings[:limit], f"... and {rest} more warnings, listed in {self.html}"]


def relative_url(target: Path, base: Path) -> str:
    """Return a percent-encoded URL of ``target`` relative to the folder ``base``.

    Spaces, ``#``, ``?``, ``%`` and non-ASCII characters are encoded, so the
    URL works in ``href`` and ``src`` attributes. A target on another drive
    (Windows) has no relative path and gets an absolute ``file:`` URL.
    """
    try:
        relative = os.path.relpath(target.resolve(), base.resolve())
    except ValueError:
        return target.resolve().as_uri()
    return urllib.parse.quote(Path(relative).as_posix(), safe="/")


def build_review(
    output_dir: str | os.PathLike[str],
    *,
    thumbnail_size: int = DEFAULT_THUMBNAIL_SIZE,
    curve_check: CurveCheck | None = None,
) -> Review:
    """Build the contact sheet and loss plots of a run from its output folder.

    Reads ``report.csv`` and the histories it names, and writes
    ``report.html``, ``loss_curves.png``, ``thumbnails/`` and ``curves/``
    beside them. Thumbnails and curves of unchanged files are reused, and
    generated files no longer referenced are removed. Missing or unreadable
    images get a placeholder and missing histories an empty cell, each with a
    warning, so a review of a partial or moved run still completes. Warnings
    are returned, not logged, so that the caller shows them once in its own
    way (the CLI on stderr, the flow in its run log).

    Args:
        output_dir: The run's output folder.
        thumbnail_size: Side length in pixels that thumbnails fit into.
            Defaults to 160.
        curve_check: The rule that flags loss curves. Defaults to
            ``CurveCheck()``.

    Returns:
        The files written, the rows shown and every warning.

    Raises:
        FileNotFoundError: When the folder or its ``report.csv`` does not exist.
        ValueError: When ``report.csv`` is not a report, or ``thumbnail_size``
            is not a positive whole number.
    """
    output_dir = Path(output_dir)
    if isinstance(thumbnail_size, bool) or not isinstance(thumbnail_size, int) or thumbnail_size < 16:
        raise ValueError(f"thumbnail_size must be a whole number of pixels, at least 16. Got {thumbnail_size!r}")
    if not output_dir.is_dir():
        raise FileNotFoundError(f"output folder {output_dir} not found; pass the folder that contains report.csv")
    report_path = output_dir / "report.csv"
    if not report_path.is_file():
        raise FileNotFoundError(f"{report_path} not found; the run wrote no report there yet")
    curve_check = curve_check if curve_check is not None else CurveCheck()

    rows, warnings = read_report_rows(report_path)

    thumbnails = output_dir / THUMBNAIL_DIR
    curve_folder = output_dir / CURVE_DIR
    thumbnails.mkdir(exist_ok=True)
    curve_folder.mkdir(exist_ok=True)
    sheet = _SheetFiles(
        output_dir=output_dir,
        thumbnails=thumbnails,
        curves=curve_folder,
        placeholder=_make_placeholder(thumbnails, thumbnail_size),
        thumbnail_size=thumbnail_size,
        warnings=warnings,
    )

    histories = _load_histories(rows, output_dir, warnings)
    flags = {pair_id: flag for pair_id, curves in histories.items() if (flag := curve_check.flag(curves.total))}
    cells = [_render_row(sheet, row, histories.get(row.pair_id), row.pair_id in flags) for row in rows]
    referenced = {name for cell in cells for name in cell.files}
    _remove_stale(thumbnails, referenced)
    _remove_stale(curve_folder, referenced)

    plot_path = output_dir / PLOT_NAME
    figure = draw_loss_curves(histories, flags, title=f"Loss curves of {len(histories)} pairs in {output_dir.name}")
    _replace_atomically(plot_path, lambda temporary: figure.savefig(temporary, format="png"))

    html_path = output_dir / HTML_NAME
    page = _render_page(
        output_dir=output_dir, rows=rows, cells=cells, flags=flags, curve_check=curve_check, warnings=warnings
    )
    _replace_atomically(html_path, lambda temporary: Path(temporary).write_text(page, encoding="utf-8"))
    logger.info(
        "Wrote %s: %d pairs, %d loss curves flagged, %d warnings", html_path, len(rows), len(flags), len(warnings)
    )
    return Review(html=html_path, plot=plot_path, rows=rows, flags=flags, warnings=warnings)


def _load_histories(rows: Iterable[ReviewRow], output_dir: Path, warnings: list[str]) -> dict[str, LossCurves]:
    histories: dict[str, LossCurves] = {}
    for row in rows:
        name = row.text("history")
        if not name:
            continue
        path = output_dir / name
        try:
            histories[row.pair_id] = read_history(path)
        except (OSError, ValueError) as error:
            warnings.append(f"loss history of pair {row.pair_id!r} not read: {error}")
    return histories


@dataclasses.dataclass(frozen=True)
class _RowCells:
    """The HTML of the image and curve cells of one row, and the files it uses."""

    images: list[str]
    curve: str
    files: list[str]


@dataclasses.dataclass
class _SheetFiles:
    """Output folders of one contact sheet, and the warnings collected while building it."""

    output_dir: Path
    thumbnails: Path
    curves: Path
    placeholder: Path
    thumbnail_size: int
    warnings: list[str]
    # One figure reused for every small curve: creating a figure costs more than drawing it.
    figure: Figure = dataclasses.field(default_factory=lambda: Figure(figsize=(1.8, 0.9), dpi=100))

    def url(self, target: Path) -> str:
        return relative_url(target, self.output_dir)


def _render_row(sheet: _SheetFiles, row: ReviewRow, history: LossCurves | None, flagged: bool) -> _RowCells:
    images = []
    files = []
    for column in ("content", "style", "output"):
        html_text, thumbnail = _image_cell(sheet, row, column)
        images.append(html_text)
        if thumbnail is not None:
            files.append(thumbnail.name)

    curve = '<span class="muted">no history</span>'
    if history is not None:
        history_path = sheet.output_dir / row.text("history")
        stat = history_path.stat()
        name = _digest(row.pair_id, history_path.resolve(), stat.st_mtime_ns, stat.st_size, flagged)
        target = sheet.curves / f"{name}.png"
        if not target.is_file():
            figure = draw_pair_curve(history, flagged=flagged, figure=sheet.figure)
            _replace_atomically(target, lambda temporary: figure.savefig(temporary, format="png"))
        files.append(target.name)
        curve = (
            f'<a href="{sheet.url(history_path)}"><img src="{sheet.url(target)}" '
            f'alt="loss curve of {_escape(row.pair_id)}" class="curve"></a>'
        )
    return _RowCells(images=images, curve=curve, files=files)


def _image_cell(sheet: _SheetFiles, row: ReviewRow, column: str) -> tuple[str, Path | None]:
    """Return the HTML of one image cell and its thumbnail, or the placeholder's HTML and ``None``."""
    text = row.text(column)
    source = _resolve_image(text, sheet.output_dir, is_output=column == "output")
    thumbnail = None
    if source is None:
        # A failed pair has no output image, which is no news worth a warning.
        if text and not (column == "output" and row.status == "failed"):
            sheet.warnings.append(f"{column} image of pair {row.pair_id!r} not found: {text}")
    else:
        try:
            thumbnail = _make_thumbnail(source, sheet.thumbnails, sheet.thumbnail_size)
        except (OSError, ValueError) as error:
            sheet.warnings.append(f"{column} image of pair {row.pair_id!r} is unreadable: {source}: {error}")

    if thumbnail is None:
        label = f"{column} image not found or unreadable: {text}" if text else f"no {column} image"
        return (
            f'<img src="{sheet.url(sheet.placeholder)}" alt="{_escape(label)}" title="{_escape(label)}" '
            'class="missing">',
            None,
        )
    return (
        f'<a href="{sheet.url(source)}"><img src="{sheet.url(thumbnail)}" '
        f'alt="{_escape(column)} image {_escape(source.name)}" title="{_escape(text)}"></a>'
        f'<div class="name">{_escape(source.name)}</div>',
        thumbnail,
    )


def _remove_stale(folder: Path, referenced: set[str]) -> None:
    for path in folder.iterdir():
        if _GENERATED_NAME.match(path.name) and path.name not in referenced:
            path.unlink(missing_ok=True)


def _escape(text: object) -> str:
    return html.escape(str(text), quote=True)


def _format_loss(value: float | None) -> str:
    return "" if value is None else f"{value:.4g}"


def _format_seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


_STATUS_RANK = {"failed": 0, "skipped": 2, "done": 3}


def _render_page(
    *,
    output_dir: Path,
    rows: list[ReviewRow],
    cells: list[_RowCells],
    flags: dict[str, str],
    curve_check: CurveCheck,
    warnings: list[str],
) -> str:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.status] = counts.get(row.status, 0) + 1
    summary = ", ".join(f"{count} {status}" for status, count in sorted(counts.items())) or "no pairs"
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")

    body = [
        _render_table_row(index, row, cell, flags.get(row.pair_id))
        for index, (row, cell) in enumerate(zip(rows, cells), start=1)
    ]

    warning_list = "".join(f"<li>{_escape(message)}</li>" for message in warnings)
    warning_block = (
        f'<details class="warnings"><summary>{len(warnings)} warning(s) while building this page</summary>'
        f"<ul>{warning_list}</ul></details>"
        if warnings
        else ""
    )
    return _PAGE.format(
        title=_escape(f"Style transfer run: {output_dir.name}"),
        heading=_escape(f"Style transfer run: {output_dir.name}"),
        summary=_escape(f"{len(rows)} pairs: {summary}; {len(flags)} loss curve(s) flagged. Built {generated}."),
        rule=_escape(curve_check.describe()),
        plot=relative_url(output_dir / PLOT_NAME, output_dir),
        warnings=warning_block,
        rows="\n".join(body),
    )


def _render_table_row(index: int, row: ReviewRow, cell: _RowCells, flag: str | None) -> str:
    # Flagged done pairs sort between failed and skipped ones.
    status_rank = 1 if flag and row.status == "done" else _STATUS_RANK.get(row.status, 1)
    total = row.number("total_loss")
    seconds = row.number("total_seconds")
    width, height = row.number("width"), row.number("height")
    size = f"{width:.0f}&times;{height:.0f}" if width and height else ""
    notes = []
    if row.text("error"):
        notes.append(f'<pre class="error">{_escape(row.text("error"))}</pre>')
    if flag:
        notes.append(f'<div class="flag">&#9888; {_escape(flag)}</div>')

    cells = [
        f'<td class="num">{index}</td>',
        f'<td><span class="badge">{_escape(row.status)}</span></td>',
        *(f'<td class="thumb">{image}</td>' for image in cell.images),
        f'<td class="thumb">{cell.curve}</td>',
        f'<td class="num">{_format_loss(total)}</td>',
        f'<td class="num">{_format_loss(row.number("content_loss"))}</td>',
        f'<td class="num">{_format_loss(row.number("style_loss"))}</td>',
        f'<td class="num">{_format_loss(row.number("tv_loss"))}</td>',
        f'<td class="num">{_format_seconds(seconds)}</td>',
        f'<td>{_escape(row.text("device"))}<div class="muted">{_escape(row.text("worker"))}</div></td>',
        f'<td class="num">{size}</td>',
        f'<td class="pair"><div class="id">{_escape(row.pair_id)}</div>{"".join(notes)}</td>',
    ]
    classes = f"status-{_escape(row.status)}" + (" flagged" if flag else "")
    sort_keys = (
        f'data-index="{index}" data-status="{status_rank}" '
        f'data-total="{"" if total is None else repr(total)}" data-time="{"" if seconds is None else repr(seconds)}"'
    )
    return f'<tr class="{classes}" {sort_keys}>' + "".join(cells) + "</tr>"


# The Content-Security-Policy lets the page load only local images, its inline
# style and its inline script, so it works offline and fetches nothing remote.
_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src 'self' file:; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; }}
th, td {{ border-bottom: 1px solid #ddd; padding: 4px 6px; vertical-align: top; text-align: left; }}
th button {{ font: inherit; font-weight: bold; border: none; background: none; cursor: pointer; padding: 0;
  text-decoration: underline; }}
th button::after {{ content: " \\2195"; color: #999; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
td.thumb img {{ display: block; width: 120px; height: 120px; object-fit: contain; }}
td.thumb img.curve {{ width: 180px; height: 90px; }}
.name, .muted {{ color: #777; font-size: 0.8em; max-width: 120px; overflow-wrap: anywhere; }}
.key-total {{ color: #1f4e9c; }} .key-content {{ color: #2e7d32; }} .key-style {{ color: #ef8f00; }}
.badge {{ padding: 1px 6px; border-radius: 3px; background: #e0e0e0; }}
.status-done .badge {{ background: #c8e6c9; }}
.status-failed .badge {{ background: #ffcdd2; }}
.status-skipped .badge {{ background: #fff9c4; }}
tr.status-failed {{ background: #fff5f5; }}
tr.flagged .flag, .flag {{ color: #b71c1c; }}
pre.error {{ white-space: pre-wrap; max-width: 40em; color: #b71c1c; margin: 0.3em 0; }}
.pair .id {{ overflow-wrap: anywhere; min-width: 12em; max-width: 30em; }}
.rule {{ color: #555; max-width: 60em; }}
</style>
</head>
<body>
<h1>{heading}</h1>
<p>{summary}</p>
<p class="rule">Each row's loss curve shows the <b class="key-total">total</b>,
<b class="key-content">content</b> and <b class="key-style">style</b> loss on a log scale against step;
a flagged curve has a red frame and a red total. {rule}
Click an image for the full-size file, a curve for its history CSV, and the underlined headings to sort.</p>
{warnings}
<p><a href="{plot}">All loss curves (loss_curves.png)</a></p>
<table id="pairs">
<thead><tr>
<th><button type="button" data-key="index">#</button></th>
<th><button type="button" data-key="status">status</button></th>
<th>content</th><th>style</th><th>output</th><th>loss curve</th>
<th><button type="button" data-key="total">total loss</button></th>
<th>content loss</th><th>style loss</th><th>tv loss</th>
<th><button type="button" data-key="time">time (s)</button></th>
<th>device</th><th>size</th><th>pair / error</th>
</tr></thead>
<tbody>
{rows}
</tbody>
</table>
<script>
(function () {{
  var body = document.querySelector("#pairs tbody");
  var direction = {{}};
  function value(row, key) {{
    var text = row.dataset[key];
    return text === "" ? NaN : parseFloat(text);
  }}
  document.querySelectorAll("#pairs th button").forEach(function (button) {{
    button.addEventListener("click", function () {{
      var key = button.dataset.key;
      var sign = direction[key] = -(direction[key] || -1);
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {{
        var x = value(a, key), y = value(b, key);
        if (isNaN(x) || isNaN(y)) {{ return isNaN(x) - isNaN(y); }}
        return sign * (x - y) || value(a, "index") - value(b, "index");
      }});
      rows.forEach(function (row) {{ body.appendChild(row); }});
    }});
  }});
}})();
</script>
</body>
</html>
"""
