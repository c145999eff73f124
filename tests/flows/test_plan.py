"""The plan: output names, done records, --force and the output-folder lock."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from flows.manifest import PairSpec, Manifest
from flows.plan import OutputLock, OutputLockedError, make_plan, write_done_record
from nst_core.settings import TransferSettings


def manifest_of(images: dict[str, Path], *specs: tuple[str, str, dict, str | None]) -> Manifest:
    pairs = [
        PairSpec(images[content], images[style], output, TransferSettings(**settings), f"line {index + 1}")
        for index, (content, style, settings, output) in enumerate(specs)
    ]
    return Manifest(source=None, base_dir=Path.cwd(), pairs=pairs, problems=[])


def finish(output_dir: Path, pair) -> None:
    """Do what a worker does when a pair succeeds: save an image, then the done record."""
    pair.output.parent.mkdir(parents=True, exist_ok=True)
    pair.output.write_bytes(b"image bytes")
    write_done_record(output_dir, pair.output, pair.settings_hash, {"pair_id": pair.pair_id, "total_loss": 1.5})


def test_default_names_join_content_and_style_stems(images: dict[str, Path], tmp_path: Path) -> None:
    manifest = manifest_of(images, ("astronaut", "shipwreck", {}, None), ("chelsea", "starry_night", {}, None))

    plan = make_plan(manifest, tmp_path, weights_identity="random:0")

    assert [pair.pair_id for pair in plan.pairs] == ["astronaut__shipwreck", "chelsea__starry_night"]
    assert plan.pairs[0].output == tmp_path / "astronaut__shipwreck.png"


def test_shared_content_and_style_get_hash_suffix(images: dict[str, Path], tmp_path: Path) -> None:
    manifest = manifest_of(
        images,
        ("astronaut", "shipwreck", {"steps": 5}, None),
        ("astronaut", "shipwreck", {"steps": 6}, None),
        ("chelsea", "shipwreck", {"steps": 5}, None),
    )

    plan = make_plan(manifest, tmp_path, weights_identity="random:0")

    first, second, third = plan.pairs
    assert first.pair_id == f"astronaut__shipwreck__{first.settings_hash}"
    assert second.pair_id == f"astronaut__shipwreck__{second.settings_hash}"
    assert first.settings_hash != second.settings_hash
    assert third.pair_id == "chelsea__shipwreck"
    assert plan.problems == []


def test_settings_hash_includes_weights_identity(images: dict[str, Path], tmp_path: Path) -> None:
    manifest = manifest_of(images, ("astronaut", "shipwreck", {}, None))

    first = make_plan(manifest, tmp_path, weights_identity="random:0").pairs[0]
    second = make_plan(manifest, tmp_path, weights_identity="random:1").pairs[0]

    assert first.settings_hash != second.settings_hash


def test_same_stem_in_two_folders_is_a_problem(images: dict[str, Path], tmp_path: Path) -> None:
    manifest = manifest_of(
        images, ("astronaut", "shipwreck", {}, "a/result.png"), ("chelsea", "shipwreck", {}, "b/result.png")
    )

    plan = make_plan(manifest, tmp_path, weights_identity="random:0")

    assert len(plan.problems) == 1
    assert "share the name 'result'" in plan.problems[0]


def test_done_pair_is_skipped(images: dict[str, Path], tmp_path: Path) -> None:
    manifest = manifest_of(images, ("astronaut", "shipwreck", {}, None), ("chelsea", "shipwreck", {}, None))
    first = make_plan(manifest, tmp_path, weights_identity="random:0")
    finish(tmp_path, first.pairs[0])

    plan = make_plan(manifest, tmp_path, weights_identity="random:0")

    assert [pair.action for pair in plan.pairs] == ["skip", "run"]
    assert plan.pairs[0].previous == {"pair_id": "astronaut__shipwreck", "total_loss": 1.5}


def test_changed_settings_rerun_the_pair(images: dict[str, Path], tmp_path: Path) -> None:
    before = manifest_of(images, ("astronaut", "shipwreck", {"steps": 5}, None))
    finish(tmp_path, make_plan(before, tmp_path, weights_identity="random:0").pairs[0])
    after = manifest_of(images, ("astronaut", "shipwreck", {"steps": 6}, None))

    assert make_plan(before, tmp_path, weights_identity="random:0").pairs[0].action == "skip"
    assert make_plan(after, tmp_path, weights_identity="random:0").pairs[0].action == "run"
    assert make_plan(before, tmp_path, weights_identity="random:1").pairs[0].action == "run"


def test_replaced_or_deleted_output_reruns_the_pair(images: dict[str, Path], tmp_path: Path) -> None:
    manifest = manifest_of(images, ("astronaut", "shipwreck", {}, "portrait.jpg"))
    pair = make_plan(manifest, tmp_path, weights_identity="random:0").pairs[0]
    finish(tmp_path, pair)

    pair.output.write_bytes(b"a different, longer image")
    assert make_plan(manifest, tmp_path, weights_identity="random:0").pairs[0].action == "run"

    pair.output.unlink()
    assert make_plan(manifest, tmp_path, weights_identity="random:0").pairs[0].action == "run"


def test_force_reruns_done_pairs(images: dict[str, Path], tmp_path: Path) -> None:
    manifest = manifest_of(images, ("astronaut", "shipwreck", {}, None))
    finish(tmp_path, make_plan(manifest, tmp_path, weights_identity="random:0").pairs[0])

    plan = make_plan(manifest, tmp_path, weights_identity="random:0", force=True)

    assert plan.pairs[0].action == "run"


def test_corrupt_done_record_reruns_the_pair(images: dict[str, Path], tmp_path: Path) -> None:
    manifest = manifest_of(images, ("astronaut", "shipwreck", {}, None))
    pair = make_plan(manifest, tmp_path, weights_identity="random:0").pairs[0]
    finish(tmp_path, pair)
    (tmp_path / ".nst" / "done" / f"{pair.pair_id}.json").write_text("{ truncated", encoding="utf-8")

    assert make_plan(manifest, tmp_path, weights_identity="random:0").pairs[0].action == "run"


class TestOutputLock:
    def test_second_lock_on_same_folder_raises(self, tmp_path: Path) -> None:
        with OutputLock(tmp_path):
            with pytest.raises(OutputLockedError, match=f"pid {os.getpid()}"):
                with OutputLock(tmp_path):
                    pass

    def test_lock_is_free_after_exit(self, tmp_path: Path) -> None:
        with OutputLock(tmp_path):
            pass
        with OutputLock(tmp_path) as lock:
            assert lock.path.exists()


def test_lock_check_names_holder_without_taking_it(tmp_path):
    free = OutputLock(tmp_path / "free")
    free.check()
    assert free.path.read_text() == ""

    with OutputLock(tmp_path / "busy"):
        with pytest.raises(OutputLockedError, match=r"busy is in use by pid \d+ on .*choose another --output-dir"):
            OutputLock(tmp_path / "busy").check()
    OutputLock(tmp_path / "busy").check()
