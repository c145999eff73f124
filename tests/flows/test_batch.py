"""Real runs of the nst-batch flow in this process on a local Dask cluster."""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import pytest
from PIL import Image

from flows.batch import BatchFailedError, run_batch
from flows.report import read_report

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]


def write_manifest(folder: Path, images: dict[str, Path], body: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    text = textwrap.dedent(body).format(**{name: str(path) for name, path in images.items()})
    path = folder / "night.yaml"
    path.write_text(text, encoding="utf-8")
    return path


BATCH = """
    defaults:
      size: 64
      steps: 4
    pairs:
      - {{content: "{astronaut}", style: "{shipwreck}"}}
      - {{content: "{astronaut}", style: "{shipwreck}", style_weight: 1e4}}
      - {{content: "{chelsea}", style: "{starry_night}"}}
      - {{content: "{coffee}", style: "{the_scream}", output: "jpeg/coffee.jpg", steps: 3}}
    """


@pytest.fixture(scope="module")
def finished_batch(
    prefect_server, tmp_path_factory: pytest.TempPathFactory, images: dict[str, Path], standin_weights: Path
):
    """One batch of four pairs on two CPU workers, run once for every test here."""
    folder = tmp_path_factory.mktemp("batch")
    manifest = write_manifest(folder, images, BATCH)
    state = run_batch(manifest=str(manifest), workers=2, weights=str(standin_weights), return_state=True)
    return manifest, state


def task_runs_of(state) -> list:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        return client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
        )


def artifacts_of(state) -> dict:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
        )
    return {artifact.key: artifact for artifact in artifacts}


class TestFinishedBatch:
    def test_flow_completes_with_counts(self, finished_batch) -> None:
        _, state = finished_batch

        summary = state.result()

        assert state.is_completed()
        assert (summary["pairs"], summary["done"], summary["skipped"], summary["failed"]) == (4, 4, 0, 0)

    def test_report_has_one_done_row_per_pair(self, finished_batch) -> None:
        manifest, _ = finished_batch

        frame = read_report(manifest.parent / "outputs" / "report.csv")

        assert len(frame) == 4
        assert set(frame["status"]) == {"done"}
        assert set(frame["device"]) == {"cpu"}
        assert frame["error"].tolist() == [""] * 4
        assert all(math.isfinite(value) for value in frame["total_loss"])
        assert sorted(frame["steps"].tolist()) == [3, 4, 4, 4]

    def test_shared_pair_names_get_settings_hash(self, finished_batch) -> None:
        manifest, _ = finished_batch

        frame = read_report(manifest.parent / "outputs" / "report.csv")
        names = set(frame["pair_id"])

        hashed = [name for name in names if name.startswith("astronaut__shipwreck__")]
        assert len(hashed) == 2
        assert {"chelsea__starry_night", "coffee"} <= names
        for row in frame.itertuples():
            assert Path(row.output).stem == row.pair_id
            assert row.pair_id.endswith(row.settings_hash) == (row.pair_id in hashed)

    def test_outputs_decode_at_planned_size(self, finished_batch) -> None:
        manifest, _ = finished_batch

        frame = read_report(manifest.parent / "outputs" / "report.csv")

        for row in frame.itertuples():
            with Image.open(row.output) as image:
                image.load()
                assert image.size == (row.width, row.height)
                assert max(image.size) == 64
        assert (manifest.parent / "outputs" / "jpeg" / "coffee.jpg").is_file()

    def test_png_carries_settings_hash(self, finished_batch) -> None:
        manifest, _ = finished_batch
        frame = read_report(manifest.parent / "outputs" / "report.csv")
        row = frame[frame["pair_id"] == "chelsea__starry_night"].iloc[0]

        with Image.open(row["output"]) as image:
            assert image.text["nst:settings_hash"] == row["settings_hash"]

    def test_histories_have_one_row_per_step(self, finished_batch) -> None:
        manifest, _ = finished_batch
        output_dir = manifest.parent / "outputs"

        frame = read_report(output_dir / "report.csv")

        for row in frame.itertuples():
            assert row.history == f"histories/{row.pair_id}.csv"
            lines = (output_dir / row.history).read_text(encoding="utf-8").splitlines()
            assert lines[0] == "step,total_loss,content_loss,style_loss,tv_loss"
            assert len(lines) == row.steps + 1

    def test_both_workers_ran_pairs(self, finished_batch) -> None:
        manifest, _ = finished_batch

        frame = read_report(manifest.parent / "outputs" / "report.csv")

        names = {worker.split(" ")[0] for worker in frame["worker"]}
        assert names == {"0", "1"}

    def test_task_runs_are_named_after_pairs(self, finished_batch) -> None:
        manifest, state = finished_batch
        frame = read_report(manifest.parent / "outputs" / "report.csv")

        task_runs = task_runs_of(state)

        assert sorted(run.name for run in task_runs) == sorted(frame["pair_id"])
        assert all(run.state.is_completed() for run in task_runs)

    def test_artifacts_hold_rows_and_summary(self, finished_batch) -> None:
        _, state = finished_batch

        artifacts = artifacts_of(state)

        table = artifacts["nst-batch-report"].data
        rows = json.loads(table) if isinstance(table, str) else table
        assert len(rows) == 4
        assert all(row["status"] == "done" for row in rows)
        assert "Pairs: 4 (done 4, skipped 0, failed 0)" in artifacts["nst-batch-summary"].data

    def test_rerun_skips_done_pairs_and_keeps_their_numbers(self, finished_batch, standin_weights: Path) -> None:
        manifest, _ = finished_batch
        report = manifest.parent / "outputs" / "report.csv"
        before = read_report(report).set_index("pair_id")

        state = run_batch(manifest=str(manifest), weights=str(standin_weights), return_state=True)
        after = read_report(report).set_index("pair_id")

        assert state.result()["skipped"] == 4
        assert set(after["status"]) == {"skipped"}
        assert sorted(after.index) == sorted(before.index)
        for column in ("total_loss", "width", "worker", "history", "started_at"):
            assert after[column].to_dict() == before.loc[after.index, column].to_dict()

    def test_changed_setting_reruns_only_that_pair(self, finished_batch, images, standin_weights: Path) -> None:
        manifest, _ = finished_batch
        changed = manifest.read_text(encoding="utf-8").replace("steps: 3", "steps: 2")
        manifest.write_text(changed, encoding="utf-8")

        state = run_batch(manifest=str(manifest), workers=1, weights=str(standin_weights), return_state=True)
        frame = read_report(manifest.parent / "outputs" / "report.csv").set_index("pair_id")

        assert state.result()["done"] == 1
        assert frame.loc["coffee", "status"] == "done"
        assert frame.loc["coffee", "steps"] == 2
        assert (frame["status"] == "skipped").sum() == 3


def test_failing_pair_leaves_the_others_done(
    tmp_path: Path, images: dict[str, Path], corrupt_jpeg: Path, standin_weights: Path
) -> None:
    manifest = write_manifest(
        tmp_path / "batch",
        {**images, "corrupt": corrupt_jpeg},
        """
        defaults: {{size: 64, steps: 3}}
        pairs:
          - {{content: "{astronaut}", style: "{shipwreck}"}}
          - {{content: "{corrupt}", style: "{shipwreck}"}}
          - {{content: "{chelsea}", style: "{shipwreck}"}}
        """,
    )

    state = run_batch(manifest=str(manifest), weights=str(standin_weights), return_state=True)
    outcome = state.result(raise_on_failure=False)
    frame = read_report(manifest.parent / "outputs" / "report.csv").set_index("pair_id")

    assert state.is_failed()
    assert isinstance(outcome, BatchFailedError)
    assert outcome.summary["failed"] == 1
    assert outcome.summary["done"] == 2
    assert frame.loc["corrupt__shipwreck", "status"] == "failed"
    assert frame.loc["corrupt__shipwreck", "error"].startswith("ImageError: ")
    assert str(corrupt_jpeg) in frame.loc["corrupt__shipwreck", "error"]
    assert frame.loc["corrupt__shipwreck", "worker"] != ""
    assert not (manifest.parent / "outputs" / "corrupt__shipwreck.png").exists()
    assert set(frame.drop(index="corrupt__shipwreck")["status"]) == {"done"}

    table = artifacts_of(state)["nst-batch-report"].data
    rows = {row["pair_id"]: row for row in (json.loads(table) if isinstance(table, str) else table)}
    assert rows["corrupt__shipwreck"]["status"] == "failed"
    assert rows["corrupt__shipwreck"]["total_loss"] is None
    assert "Failures" in artifacts_of(state)["nst-batch-summary"].data

    failed_runs = [run for run in task_runs_of(state) if run.name == "corrupt__shipwreck"]
    assert len(failed_runs) == 1
    assert failed_runs[0].state.is_failed()
    assert failed_runs[0].run_count == 1, "an undecodable image must not be retried"
