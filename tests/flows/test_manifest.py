"""Manifests: YAML, spreadsheet CSV and folder mode, and every validation problem."""

from __future__ import annotations

import dataclasses
import os
import textwrap
from pathlib import Path

import pytest

from flows.manifest import ManifestError, folder_manifest, load_manifest
from flows.plan import make_plan
from nst_core.settings import MAX_SIZE, MAX_STEPS


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


@pytest.fixture
def workspace(tmp_path: Path, images: dict[str, Path]) -> Path:
    """A manifest folder with copies of two content and two style images."""
    folder = tmp_path / "batch"
    for name in ("astronaut", "chelsea"):
        target = folder / "photos" / images[name].name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(images[name].read_bytes())
    for name in ("shipwreck", "starry_night"):
        target = folder / "paintings" / images[name].name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(images[name].read_bytes())
    return folder


def problems_of(path: Path, tmp_path: Path) -> list[str]:
    manifest = load_manifest(path)
    plan = make_plan(manifest, tmp_path / "out", weights_identity="random:0")
    return manifest.problems + plan.problems


class TestYaml:
    def test_defaults_and_overrides_merge(self, workspace: Path) -> None:
        path = write(
            workspace / "night.yaml",
            """
            defaults:
              size: 96
              steps: 7
            pairs:
              - content: photos/astronaut.png
                style: paintings/shipwreck.jpg
              - content: photos/chelsea.png
                style: paintings/starry_night.jpg
                steps: 3
                style_weight: 2e4
            """,
        )
        manifest = load_manifest(path)

        assert manifest.problems == []
        first, second = manifest.pairs
        assert (first.settings.size, first.settings.steps) == (96, 7)
        assert (second.settings.size, second.settings.steps) == (96, 3)
        assert second.settings.style_weight == 2e4

    def test_relative_paths_resolve_against_manifest_folder(
        self, workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        path = write(
            workspace / "night.yaml",
            """
            pairs:
              - {content: photos/astronaut.png, style: paintings/shipwreck.jpg}
            """,
        )
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        monkeypatch.chdir(elsewhere)

        manifest = load_manifest(Path(os.path.relpath(path, elsewhere)))

        assert manifest.problems == []
        assert manifest.pairs[0].content == workspace / "photos" / "astronaut.png"
        assert manifest.pairs[0].style == workspace / "paintings" / "shipwreck.jpg"

    def test_folder_keys_pair_every_content_with_every_style(self, workspace: Path) -> None:
        path = write(
            workspace / "folders.yaml",
            """
            defaults: {size: 64}
            content_dir: photos
            style_dir: paintings
            style_glob: "ship*.jpg"
            """,
        )
        manifest = load_manifest(path)

        assert manifest.problems == []
        assert [(pair.content.stem, pair.style.stem) for pair in manifest.pairs] == [
            ("astronaut", "shipwreck"),
            ("chelsea", "shipwreck"),
        ]
        assert all(pair.settings.size == 64 for pair in manifest.pairs)

    def test_invalid_yaml_names_its_line(self, workspace: Path) -> None:
        path = write(workspace / "broken.yaml", "pairs:\n  - content: a.png\n    style: [unclosed\n")

        problems = load_manifest(path).problems

        assert len(problems) == 1
        assert problems[0].startswith("line ")
        assert "invalid YAML" in problems[0]

    def test_python_tags_are_rejected(self, workspace: Path) -> None:
        path = write(workspace / "unsafe.yaml", "pairs: !!python/object/apply:os.system ['true']\n")

        problems = load_manifest(path).problems

        assert len(problems) == 1
        assert "invalid YAML" in problems[0]

    def test_empty_manifest_is_a_problem(self, workspace: Path) -> None:
        path = write(workspace / "empty.yaml", "defaults: {size: 64}\n")

        assert load_manifest(path).problems == [
            "the manifest lists no pairs. Add 'pairs:' or 'content_dir:' and 'style_dir:'"
        ]


class TestCsv:
    def test_spreadsheet_file_reads_like_plain_csv(self, workspace: Path) -> None:
        (workspace / "photos" / "cat, sitting.png").write_bytes((workspace / "photos" / "chelsea.png").read_bytes())
        rows = [
            "content,style,output,steps,style_weight",
            "photos/astronaut.png,paintings/shipwreck.jpg,,,",
            '"photos/cat, sitting.png","paintings/starry_night.jpg","cat.jpg","3","1e4"',
        ]
        path = workspace / "sheet.csv"
        path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(rows).encode() + b"\r\n")

        manifest = load_manifest(path)

        assert manifest.problems == []
        first, second = manifest.pairs
        assert first.content == workspace / "photos" / "astronaut.png"
        assert first.output is None
        assert first.settings.steps == 200
        assert second.content == workspace / "photos" / "cat, sitting.png"
        assert second.output == "cat.jpg"
        assert second.settings.steps == 3
        assert second.settings.style_weight == 1e4

    def test_unknown_column_is_reported_on_line_1(self, workspace: Path, tmp_path: Path) -> None:
        path = write(
            workspace / "sheet.csv",
            """
            content,style,colour
            photos/astronaut.png,paintings/shipwreck.jpg,blue
            """,
        )

        problems = problems_of(path, tmp_path)

        assert len(problems) == 1
        assert problems[0].startswith("line 1: unknown column 'colour'")

    def test_bad_values_name_their_line(self, workspace: Path, tmp_path: Path) -> None:
        path = write(
            workspace / "sheet.csv",
            """
            content,style,steps,content_weight
            photos/astronaut.png,paintings/shipwreck.jpg,5,1
            photos/chelsea.png,paintings/shipwreck.jpg,0,-2
            """,
        )

        problems = problems_of(path, tmp_path)

        assert problems == [
            "line 3: steps must be between 1 and 100000. Got 0",
            "line 3: content_weight must be a finite number of at least 0. Got -2.0",
        ]


class TestValidation:
    def test_every_problem_is_reported_at_once(self, workspace: Path, tmp_path: Path) -> None:
        path = write(
            workspace / "bad.yaml",
            f"""
            defaults:
              steps: 5
            colour: blue
            pairs:
              - content: photos/missing.png
                style: paintings/shipwreck.jpg
              - content: photos/astronaut.png
                style: paintings/shipwreck.jpg
                speed: 3
              - content: photos/astronaut.png
                style: paintings/shipwreck.jpg
                steps: many
              - content: photos/astronaut.png
                style: paintings/shipwreck.jpg
                style_weight: -1
              - content: photos/astronaut.png
                style: paintings/shipwreck.jpg
                steps: 0
              - content: photos/astronaut.png
                style: paintings/shipwreck.jpg
                size: {MAX_SIZE + 1}
              - content: photos/astronaut.png
                style: paintings/shipwreck.jpg
                steps: {MAX_STEPS + 1}
              - content: photos/chelsea.png
                style: paintings/shipwreck.jpg
                output: same.png
              - content: photos/chelsea.png
                style: paintings/starry_night.jpg
                output: same.png
              - content: photos/astronaut.png
                style: paintings/starry_night.jpg
                output: ../../outside.png
              - style: paintings/starry_night.jpg
            """,
        )

        problems = problems_of(path, tmp_path)

        expected = [
            "line 3: unknown key 'colour'",
            "line 5: content image 'photos/missing.png' not found",
            "line 7: unknown setting 'speed'",
            "line 10: steps must be a whole number. Got 'many'",
            "line 13: style_weight must be a finite number of at least 0. Got -1.0",
            "line 16: steps must be between 1 and 100000. Got 0",
            f"line 19: size must be between 1 and {MAX_SIZE}. Got {MAX_SIZE + 1}",
            f"line 22: steps must be between 1 and {MAX_STEPS}. Got {MAX_STEPS + 1}",
            "line 31: output '../../outside.png' is outside the output folder",
            "line 34: missing 'content' image path",
            "line 25: 2 pairs write the same output",
        ]
        for start in expected:
            assert any(problem.startswith(start) for problem in problems), start
        assert len(problems) == len(expected)

    def test_manifest_error_lists_every_problem(self, workspace: Path) -> None:
        path = write(
            workspace / "bad.yaml",
            """
            pairs:
              - {content: photos/missing.png, style: paintings/shipwreck.jpg}
              - {content: photos/astronaut.png, style: paintings/gone.jpg}
            """,
        )
        manifest = load_manifest(path)

        with pytest.raises(ManifestError) as caught:
            manifest.raise_for_problems()

        assert len(caught.value.problems) == 2
        assert "photos/missing.png" in str(caught.value)
        assert "paintings/gone.jpg" in str(caught.value)

    @pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs file permissions that bind the user")
    def test_unreadable_image_is_a_problem(self, workspace: Path, tmp_path: Path) -> None:
        locked = workspace / "photos" / "astronaut.png"
        locked.chmod(0)
        path = write(workspace / "m.yaml", "pairs:\n  - {content: photos/astronaut.png, style: paintings/shipwreck.jpg}\n")
        try:
            problems = problems_of(path, tmp_path)
        finally:
            locked.chmod(0o644)

        assert len(problems) == 1
        assert "cannot be read" in problems[0]

    def test_output_must_be_an_image_suffix(self, workspace: Path, tmp_path: Path) -> None:
        path = write(
            workspace / "m.yaml",
            "pairs:\n  - {content: photos/astronaut.png, style: paintings/shipwreck.jpg, output: result.gif}\n",
        )

        problems = problems_of(path, tmp_path)

        assert problems == ["line 2: output 'result.gif' must end in .png, .jpg, .jpeg"]

    def test_unknown_suffix_raises(self, workspace: Path) -> None:
        path = write(workspace / "m.txt", "content,style\n")

        with pytest.raises(ManifestError, match="unknown manifest format '.txt'"):
            load_manifest(path)

    def test_missing_manifest_raises(self, tmp_path: Path) -> None:
        with pytest.raises(ManifestError, match="manifest file not found"):
            load_manifest(tmp_path / "nothing.yaml")


class TestFolderMode:
    def test_pairs_every_content_with_every_style(self, workspace: Path) -> None:
        manifest = folder_manifest(workspace / "photos", workspace / "paintings", defaults={"steps": 4})

        assert manifest.problems == []
        assert len(manifest.pairs) == 4
        assert {pair.settings.steps for pair in manifest.pairs} == {4}

    def test_glob_without_matches_is_a_problem(self, workspace: Path) -> None:
        manifest = folder_manifest(workspace / "photos", workspace / "paintings", content_glob="*.tif")

        assert len(manifest.problems) == 1
        assert "no content images matching '*.tif'" in manifest.problems[0]

    def test_missing_folder_is_a_problem(self, workspace: Path) -> None:
        manifest = folder_manifest(workspace / "nope", workspace / "paintings")

        assert len(manifest.problems) == 1
        assert "content folder" in manifest.problems[0]
        assert "not found" in manifest.problems[0]


class TestExamples:
    EXAMPLES = Path(__file__).resolve().parents[2] / "manifests"

    def test_yaml_and_csv_examples_list_the_same_pairs(self) -> None:
        from_yaml = load_manifest(self.EXAMPLES / "example.yaml")
        from_csv = load_manifest(self.EXAMPLES / "example.csv")

        assert from_yaml.problems == []
        assert from_csv.problems == []
        assert len(from_yaml.pairs) == 4
        assert from_yaml.pairs == [
            dataclasses.replace(pair, location=yaml_pair.location)
            for pair, yaml_pair in zip(from_csv.pairs, from_yaml.pairs)
        ]

    def test_examples_are_small(self) -> None:
        for pair in load_manifest(self.EXAMPLES / "example.yaml").pairs:
            assert pair.settings.size <= 128
            assert pair.settings.steps <= 50
            assert pair.content.stat().st_size < 20_000
            assert pair.style.stat().st_size < 20_000
