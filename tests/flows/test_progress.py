"""Tests of the batch progress: terminal bar, plain log lines, summary line and
the Prefect progress and link artifacts."""

from __future__ import annotations

import io
import json
import os
import re
import select
import shutil
import uuid
from pathlib import Path

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from prefect.context import FlowRunContext

from flows.progress import LINK_ARTIFACT_KEY, PROGRESS_ARTIFACT_KEY, RunProgress, format_duration


class Clock:
    """A clock the test moves by hand, so that rates and estimates are exact."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_format_duration_pads_minutes_and_seconds():
    assert format_duration(0) == "0:00:00"
    assert format_duration(59.9) == "0:00:59"
    assert format_duration(3 * 3600 + 7 * 60 + 5) == "3:07:05"
    assert format_duration(-4) == "0:00:00"


def test_plain_stream_gets_one_line_per_pair():
    stream = io.StringIO()
    clock = Clock()
    progress = RunProgress(3, stream=stream, clock=clock)

    clock.now += 30
    progress.pair_finished("astronaut__shipwreck", "done")
    clock.now += 30
    progress.pair_finished("chelsea__shipwreck", "failed")
    lines = stream.getvalue().splitlines()

    assert not progress.interactive
    assert "\r" not in stream.getvalue()
    assert len(lines) == 2
    assert "pair astronaut__shipwreck done" in lines[0]
    assert "1/3 done 1 failed 0" in lines[0]
    assert "0:00:30 elapsed" in lines[0]
    assert "~0:01:00 left" in lines[0]
    assert "pair chelsea__shipwreck failed" in lines[1]
    assert "2/3 done 1 failed 1" in lines[1]
    assert "~0:00:30 left" in lines[1]
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ", lines[0])


def test_estimate_leaves_skipped_pairs_out_of_the_rate():
    clock = Clock()
    stream = io.StringIO()
    progress = RunProgress(5, stream=stream, clock=clock)

    progress.pairs_skipped(1)
    assert progress.remaining_estimate() is None
    assert "1 pairs already done, skipped; 1/5 done 0 failed 0 skipped 1" in stream.getvalue()
    clock.now += 10
    progress.pair_finished("b", "done")
    progress.pair_finished("c", "done")

    # 2 pairs ran in 10 s and 2 of 5 are left: 5 s each.
    assert progress.remaining_estimate() == pytest.approx(10.0)
    assert progress.pairs_per_hour() == pytest.approx(720.0)


def test_summary_line_has_counts_time_rate_and_report(tmp_path):
    stream = io.StringIO()
    clock = Clock()
    progress = RunProgress(4, stream=stream, clock=clock)
    for pair_id, status in [("a", "done"), ("b", "done"), ("c", "failed"), ("d", "skipped")]:
        clock.now += 60
        progress.pair_finished(pair_id, status)
    html = tmp_path / "report.html"

    line = progress.finish(html)

    assert stream.getvalue().endswith(line + "\n")
    assert "4 of 4 pairs finished (2 done, 1 failed, 1 skipped)" in line
    assert "wall time 0:04:00" in line
    assert "45.0 pairs/hour" in line
    assert f"report: {html.resolve()}" in line
    assert "\n" not in line


def test_summary_before_any_pair_ran():
    progress = RunProgress(0, stream=io.StringIO(), clock=Clock())

    line = progress.finish()

    assert "0 of 0 pairs finished" in line
    assert "no pairs run" in line
    assert "report:" not in line


def _read_terminal(leader: int) -> str:
    """Read what the terminal holds; it may hand it over in several chunks."""
    chunks = []
    while select.select([leader], [], [], 0.5)[0]:
        chunk = os.read(leader, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode("utf-8")


def test_terminal_gets_a_bar_redrawn_in_place(monkeypatch):
    monkeypatch.setenv("COLUMNS", "60")
    monkeypatch.setenv("TERM", "xterm")
    leader, follower = os.openpty()
    stream = os.fdopen(follower, "w", encoding="utf-8")
    clock = Clock()
    try:
        progress = RunProgress(2, stream=stream, clock=clock)
        progress.start()
        clock.now += 5
        progress.pair_finished("a", "done")
        clock.now += 5
        progress.pair_finished("b", "failed")
        line = progress.finish()
        output = _read_terminal(leader)
    finally:
        stream.close()
        os.close(leader)

    assert progress.interactive
    # The terminal turns each "\n" into "\r\n": the bar's frames, then the summary line.
    bars, summary, rest = output.split("\r\n")
    frames = [frame.replace("\x1b[K", "") for frame in bars.split("\r") if frame]
    assert len(frames) >= 3
    # Cut to the terminal's 60 columns, less one so that the line never wraps.
    assert frames[0] == ("[" + "-" * 20 + "] 0/2 done 0 failed 0 | 0:00:00 elapsed | -:--:-- left")[:59]
    assert frames[-1] == ("[" + "#" * 20 + "] 2/2 done 1 failed 1 | 0:00:10 elapsed | ~0:00:00 left")[:59]
    assert all(len(frame) <= 59 for frame in frames)
    assert summary == line
    assert rest == ""


def test_dumb_terminal_gets_plain_lines(monkeypatch):
    monkeypatch.setenv("TERM", "dumb")
    leader, follower = os.openpty()
    stream = os.fdopen(follower, "w", encoding="utf-8")
    try:
        progress = RunProgress(1, stream=stream)
    finally:
        stream.close()
        os.close(leader)

    assert not progress.interactive


@pytest.mark.parametrize("total", [-1, 2.5, True, "3"])
def test_invalid_total_is_rejected(total):
    with pytest.raises(ValueError, match="total must be a whole number"):
        RunProgress(total, stream=io.StringIO())


@pytest.mark.parametrize("count", [-1, 3, 1.0])
def test_invalid_skipped_count_is_rejected(count):
    progress = RunProgress(2, stream=io.StringIO())

    with pytest.raises(ValueError, match="count must be a whole number from 0 to the 2 pairs left"):
        progress.pairs_skipped(count)


def test_unknown_status_is_rejected():
    progress = RunProgress(1, stream=io.StringIO())

    with pytest.raises(ValueError, match="status must be one of done, failed, skipped. Got 'ok'"):
        progress.pair_finished("a", "ok")


def test_no_artifact_outside_a_flow_run():
    progress = RunProgress(1, stream=io.StringIO())
    progress.pair_finished("a", "done")
    progress.finish()

    assert progress._artifact_id is None


# --- Prefect artifacts, in real flow runs ------------------------------------


def _artifacts_of(flow_run_id: uuid.UUID):
    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )


@flow(name="progress-test")
def _progress_flow(statuses: list[str], report: str) -> dict:
    progress = RunProgress(len(statuses), stream=io.StringIO())
    seen = []
    for index, status in enumerate(statuses):
        progress.pair_finished(f"pair{index}", status)
        artifact = next(item for item in _artifacts_of(FlowRunContext.get().flow_run.id) if item.type == "progress")
        seen.append(artifact.data)
    line = progress.finish(report)
    return {"seen": seen, "line": line, "flow_run_id": str(FlowRunContext.get().flow_run.id)}


def test_progress_and_link_artifacts_follow_the_run(tmp_path):
    html = tmp_path / "my report #1" / "report.html"
    html.parent.mkdir()
    html.write_text("<!DOCTYPE html><title>x</title>", encoding="utf-8")

    result = _progress_flow(["done", "failed", "skipped", "done"], str(html))
    artifacts = _artifacts_of(uuid.UUID(result["flow_run_id"]))

    assert result["seen"] == [25.0, 50.0, 75.0, 100.0]
    progress = [item for item in artifacts if item.type == "progress"]
    assert [item.key for item in progress] == [PROGRESS_ARTIFACT_KEY]
    assert progress[0].data == 100.0
    links = [item for item in artifacts if item.type == "markdown" and item.key == LINK_ARTIFACT_KEY]
    assert len(links) == 1
    assert html.resolve().as_uri() in links[0].data
    assert "%20%231/report.html" in links[0].data


def test_no_link_artifact_without_a_contact_sheet(tmp_path):
    result = _progress_flow(["done"], str(tmp_path / "report.html"))
    artifacts = _artifacts_of(uuid.UUID(result["flow_run_id"]))

    assert [item.type for item in artifacts] == ["progress"]
    assert Path(result["line"].rpartition("report: ")[2]) == (tmp_path / "report.html").resolve()


# --- the real flow ------------------------------------------------------------


@pytest.mark.slow
def test_failed_flow_ends_with_artifacts(tmp_path, content_dir, style_dir, corrupt_jpeg,
                                                               standin_weights):  # fmt: skip
    from flows.batch import run_batch

    contents = tmp_path / "contents"
    contents.mkdir()
    shutil.copy(sorted(content_dir.glob("*.png"))[0], contents)
    shutil.copy(corrupt_jpeg, contents / "broken.jpg")
    styles = tmp_path / "styles"
    styles.mkdir()
    shutil.copy(sorted(style_dir.glob("*.jpg"))[0], styles)
    output_dir = tmp_path / "out"

    state = run_batch(
        content_dir=str(contents),
        style_dir=str(styles),
        output_dir=str(output_dir),
        weights=str(standin_weights),
        workers=1,
        defaults={"size": 64, "steps": 5},
        return_state=True,
    )
    artifacts = {item.key: item for item in _artifacts_of(state.state_details.flow_run_id)}
    table = artifacts["nst-batch-report"].data
    rows = json.loads(table) if isinstance(table, str) else table
    html = (output_dir / "report.html").read_text(encoding="utf-8")

    assert state.is_failed()
    assert artifacts[PROGRESS_ARTIFACT_KEY].data == 100.0
    assert (output_dir / "report.html").resolve().as_uri() in artifacts[LINK_ARTIFACT_KEY].data
    assert "NaN" not in json.dumps(rows)
    failed = [row for row in rows if row["status"] == "failed"]
    assert len(failed) == 1
    assert failed[0]["total_loss"] is None
    assert 'class="status-failed"' in html
    assert "broken.jpg" in html
