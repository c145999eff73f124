"""Tests of reading loss histories, flagging poor convergence and plotting curves."""

from __future__ import annotations

import math

import pytest

from flows.loss_curves import CurveCheck, LossCurves, draw_loss_curves, draw_pair_curve, read_history
from flows.report import write_history


def decaying_history(steps: int = 20) -> LossCurves:
    """A history whose losses fall as 1/step, the shape of a converging run."""
    numbers = tuple(float(step) for step in range(1, steps + 1))
    return LossCurves(
        steps=numbers,
        total=tuple(1000.0 / step for step in numbers),
        content=tuple(0.0 if step == 1 else 10.0 - 5.0 / step for step in numbers),
        style=tuple(0.01 / step for step in numbers),
        tv=(0.0,) * steps,
    )


def test_read_history_round_trips_written_rows(tmp_path):
    rows = [{"step": step, "total_loss": 10.0 / step, "content_loss": 1.0, "style_loss": 0.5, "tv_loss": 0.0}
            for step in range(1, 6)]  # fmt: skip
    write_history(tmp_path / "pair.csv", rows)

    history = read_history(tmp_path / "pair.csv")

    assert history.steps == (1.0, 2.0, 3.0, 4.0, 5.0)
    assert history.total == pytest.approx([10.0 / step for step in range(1, 6)])
    assert history.style == (0.5,) * 5


def test_read_history_ignores_a_cut_off_last_line(tmp_path):
    path = tmp_path / "pair.csv"
    path.write_text("step,total_loss,content_loss,style_loss,tv_loss\n1,9,1,1,0\n2,8,1,1,0\n3,7.", encoding="utf-8")

    history = read_history(path)

    assert history.total == (9.0, 8.0)


def test_read_history_turns_bad_cells_into_nan(tmp_path):
    path = tmp_path / "pair.csv"
    path.write_text("step,total_loss,content_loss,style_loss,tv_loss\n1,nan,x,,0\n", encoding="utf-8")

    history = read_history(path)

    assert math.isnan(history.total[0])
    assert math.isnan(history.content[0])
    assert math.isnan(history.style[0])


def test_read_history_rejects_missing_columns(tmp_path):
    path = tmp_path / "pair.csv"
    path.write_text("step,total_loss\n1,9\n", encoding="utf-8")

    with pytest.raises(ValueError, match="lacks the columns content_loss, style_loss, tv_loss"):
        read_history(path)


@pytest.mark.parametrize(
    ("total", "expected"),
    [
        ([100.0, 40.0, 20.0, 10.0], None),
        ([100.0, 40.0, 10.0, 12.0], "turned up"),
        ([100.0, 90.0, 80.0, 70.0], "stalled"),
        ([100.0, math.nan, 10.0], "NaN"),
        ([100.0, 10.0, math.inf], "NaN"),
        ([5.0], None),
        ([], None),
    ],
)
def test_curve_check_flags(total, expected):
    flag = CurveCheck().flag(total)

    if expected is None:
        assert flag is None
    else:
        assert expected in flag


def test_curve_check_thresholds_are_adjustable():
    total = [100.0, 40.0, 10.0, 10.5]

    assert CurveCheck().flag(total) is None
    assert "turned up" in CurveCheck(rise_tolerance=0.01).flag(total)
    assert "stalled" in CurveCheck(min_improvement=20).flag(total)


def test_curve_check_rejects_invalid_thresholds():
    with pytest.raises(ValueError, match="rise_tolerance"):
        CurveCheck(rise_tolerance=-0.1)
    with pytest.raises(ValueError, match="min_improvement"):
        CurveCheck(min_improvement=0.5)


def test_rule_description_names_the_thresholds():
    text = CurveCheck(rise_tolerance=0.25, min_improvement=3).describe()

    assert "more than 25% above its minimum" in text
    assert "less than 3 times the final one" in text


def test_pair_curve_marks_flagged_runs_red():
    plain = draw_pair_curve(decaying_history(), flagged=False)
    plain_total = plain.axes[0].lines[-1].get_color()
    flagged = draw_pair_curve(decaying_history(), flagged=True)

    assert plain_total == "#1f4e9c"
    assert flagged.axes[0].lines[-1].get_color() == "#c62828"
    assert flagged.axes[0].get_yscale() == "log"
    # The content loss of step 1 is 0, which a log scale cannot show.
    assert len(flagged.axes[0].lines[0].get_xdata()) == 19


def test_many_pairs_grey_out_unflagged_curves():
    curves = {f"pair{index:02d}": decaying_history() for index in range(25)}

    figure = draw_loss_curves(curves, {"pair07": "stalled"}, title="test")
    lines = figure.axes[0].lines

    assert len(lines) == 25
    assert [line.get_label() for line in lines if not line.get_label().startswith("_")] == ["pair07 (flagged)"]
    assert lines[7].get_linestyle() == "--"
    assert {line.get_color() for index, line in enumerate(lines) if index != 7} == {"#9e9e9e"}


def test_few_pairs_get_a_colour_each():
    curves = {f"pair{index}": decaying_history() for index in range(3)}

    figure = draw_loss_curves(curves, {}, title="test")

    for axes in figure.axes[:3]:
        assert [line.get_label() for line in axes.lines] == ["pair0", "pair1", "pair2"]
        assert len({line.get_color() for line in axes.lines}) == 3
