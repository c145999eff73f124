"""Loss histories of a run: reading them, flagging poor convergence, plotting them.

A history is ``<output-dir>/histories/<pair_id>.csv`` with the columns
``step,total_loss,content_loss,style_loss,tv_loss``, one row per optimiser
step. The contact sheet (``flows.review``) shows a small curve per pair and
``loss_curves.png`` with every pair.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from matplotlib.figure import Figure  # noqa: E402  (the backend is chosen first)
from matplotlib.ticker import MaxNLocator  # noqa: E402

from flows.report import HISTORY_COLUMNS  # noqa: E402

__all__ = ["LossCurves", "CurveCheck", "read_history", "draw_pair_curve", "draw_loss_curves"]


@dataclasses.dataclass(frozen=True)
class LossCurves:
    """The loss history of one pair, one value per optimiser step.

    Attributes:
        steps: Step numbers as the history file gives them.
        total: Weighted total loss.
        content: Unweighted content loss.
        style: Unweighted style loss.
        tv: Unweighted total-variation loss.
    """

    steps: tuple[float, ...]
    total: tuple[float, ...]
    content: tuple[float, ...]
    style: tuple[float, ...]
    tv: tuple[float, ...]


def read_history(path: str | os.PathLike[str]) -> LossCurves:
    """Read ``histories/<pair_id>.csv``.

    Cells that are not numbers become NaN, and a last line without its line
    break is ignored, as ``flows.review.read_report_rows`` does for the report.

    Raises:
        FileNotFoundError: When the file does not exist.
        ValueError: When a column is missing.
    """
    path = Path(path)
    raw = path.read_bytes()
    complete = raw if raw.endswith(b"\n") else raw.rpartition(b"\n")[0]
    reader = csv.DictReader(io.StringIO(complete.decode("utf-8", errors="replace"), newline=""))
    missing = [name for name in HISTORY_COLUMNS if name not in (reader.fieldnames or [])]
    if missing:
        raise ValueError(f"loss history {path} lacks the columns {', '.join(missing)}")

    columns: dict[str, list[float]] = {name: [] for name in HISTORY_COLUMNS}
    for record in reader:
        for name in HISTORY_COLUMNS:
            columns[name].append(_parse_float(record.get(name) or ""))
    return LossCurves(
        steps=tuple(columns["step"]),
        total=tuple(columns["total_loss"]),
        content=tuple(columns["content_loss"]),
        style=tuple(columns["style_loss"]),
        tv=tuple(columns["tv_loss"]),
    )


# --- flagging curves that did not converge ---------------------------------


@dataclasses.dataclass(frozen=True)
class CurveCheck:
    """The rule that flags a total-loss curve as worth a look.

    A curve is flagged when any of these holds:

    - a value is NaN or infinite;
    - it turned up: the final loss is more than ``rise_tolerance`` above the
      smallest loss of the run (``final > (1 + rise_tolerance) * minimum``);
    - it stalled: the first loss is less than ``min_improvement`` times the
      final loss (``first / final < min_improvement``).

    Args:
        rise_tolerance: Allowed rise of the final loss above the minimum, as a
            fraction. Defaults to 0.1 (10 %).
        min_improvement: Smallest accepted ratio of first to final loss.
            Defaults to 2 (at least a halving).
    """

    rise_tolerance: float = 0.1
    min_improvement: float = 2.0

    def __post_init__(self) -> None:
        if not (isinstance(self.rise_tolerance, (int, float)) and 0 <= self.rise_tolerance < math.inf):
            raise ValueError(f"rise_tolerance must be a finite number of at least 0. Got {self.rise_tolerance!r}")
        if not (isinstance(self.min_improvement, (int, float)) and 1 <= self.min_improvement < math.inf):
            raise ValueError(f"min_improvement must be a finite number of at least 1. Got {self.min_improvement!r}")

    def describe(self) -> str:
        """Return the rule as one sentence for the page and the docs."""
        return (
            "A loss curve is flagged when its total loss is NaN or infinite, when the final total loss is "
            f"more than {self.rise_tolerance:.0%} above its minimum (it turned up), or when the first "
            f"total loss is less than {self.min_improvement:g} times the final one (it stalled)."
        )

    def flag(self, total: Sequence[float]) -> str | None:
        """Return why a total-loss curve is flagged, or ``None`` when it is not."""
        if not total:
            return None
        if not all(math.isfinite(value) for value in total):
            return "the loss became NaN or infinite"
        if len(total) < 2:
            return None
        first, final, minimum = total[0], total[-1], min(total)
        step = total.index(minimum) + 1
        if final > (1 + self.rise_tolerance) * minimum:
            rise = final / minimum - 1 if minimum > 0 else math.inf
            return f"turned up: the final loss is {rise:.0%} above its minimum at step {step}"
        if final > 0 and first / final < self.min_improvement:
            return f"stalled: the loss fell only {first / final:.2f}-fold (less than {self.min_improvement:g}-fold)"
        return None


# --- plots -------------------------------------------------------------------


def _finite_positive(steps: Sequence[float], values: Sequence[float]) -> tuple[list[float], list[float]]:
    """Keep the points a log scale can show."""
    points = [(x, y) for x, y in zip(steps, values) if math.isfinite(x) and math.isfinite(y) and y > 0]
    return [x for x, _ in points], [y for _, y in points]


def draw_pair_curve(curves: LossCurves, *, flagged: bool, figure: Figure | None = None) -> Figure:
    """Draw one pair's total, content and style loss small, on a log scale.

    Args:
        curves: The pair's loss history.
        flagged: Draw the total loss in red and the frame red.
        figure: A figure to reuse, which saves time over hundreds of pairs.
            Defaults to a new 180 x 90 pixel figure.

    Returns:
        The figure, with no ticks or labels.
    """
    figure = figure if figure is not None else Figure(figsize=(1.8, 0.9), dpi=100)
    figure.clear()
    axes = figure.add_axes((0.01, 0.02, 0.98, 0.96))
    axes.set_yscale("log")
    colour = "#c62828" if flagged else "#1f4e9c"
    for values, line_colour in ((curves.content, "#2e7d32"), (curves.style, "#ef8f00"), (curves.total, colour)):
        x, y = _finite_positive(curves.steps, values)
        if x:
            axes.plot(x, y, color=line_colour, linewidth=1.6 if values is curves.total else 0.9)
    axes.set_xticks([])
    axes.set_yticks([], minor=True)
    axes.set_yticks([])
    for spine in axes.spines.values():
        spine.set_color("#c62828" if flagged else "#bbbbbb")
        spine.set_linewidth(1.5 if flagged else 0.8)
    return figure


def draw_loss_curves(curves: dict[str, LossCurves], flags: dict[str, str], *, title: str) -> Figure:
    """Draw total, content and style loss of every pair against step.

    The loss axes are logarithmic and the step axis linear, so that a late
    rise stays visible. Each panel gets one line per pair with a history. With
    up to 20 pairs, each pair has its own colour and a legend entry. With
    more, unflagged curves are thin and grey so that the flagged ones stand
    out. Flagged curves are dashed and their legend entry ends with "(flagged)".

    Args:
        curves: Loss history per pair id.
        flags: Why a pair's curve is flagged, for flagged pair ids only.
        title: The figure's title.

    Returns:
        The figure, with the panels total, content and style loss in order.
    """
    figure = Figure(figsize=(15, 5.5), dpi=100, layout="constrained")
    panels = figure.subplots(1, 3, sharex=True)
    many = len(curves) > 20
    palette = matplotlib.colormaps["tab20"]
    for index, (pair_id, history) in enumerate(curves.items()):
        flagged = pair_id in flags
        if many and not flagged:
            options = {"color": "#9e9e9e", "linewidth": 0.6, "alpha": 0.5, "label": "_nolegend_"}
        else:
            options = {
                "color": "#c62828" if many else palette(index % 20),
                "linewidth": 1.8 if flagged else 1.2,
                "linestyle": "--" if flagged else "-",
                "label": f"{pair_id} (flagged)" if flagged else pair_id,
            }
        for axes, values in zip(panels, (history.total, history.content, history.style)):
            x, y = _finite_positive(history.steps, values)
            axes.plot(x, y, **options)
    for axes, name in zip(panels, ("total loss (weighted)", "content loss", "style loss")):
        axes.set_yscale("log")
        axes.set_title(name)
        axes.set_xlabel("step")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(True, which="both", alpha=0.3)
    if not curves:
        panels[1].text(0.5, 0.5, "no loss histories found", ha="center", va="center", transform=panels[1].transAxes)
    handles, labels = panels[0].get_legend_handles_labels()
    if handles:
        figure.legend(handles, labels, loc="outside lower center", ncols=4, fontsize="small", frameon=False)
    figure.suptitle(title)
    return figure


def _parse_float(cell: str) -> float:
    try:
        return float(cell)
    except ValueError:
        return math.nan
