"""Manifests: YAML, CSV and folder listings of content/style pairs.

A manifest names pairs of a content image and a style image, each with
optional transfer settings. Loading one resolves relative paths against the
manifest's own folder, merges the defaults into each pair's settings and
collects every problem, each tagged with its line, instead of stopping at the
first. Output names and collisions are the plan's job (``flows.plan``).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from nst_core.settings import SettingsError, TransferSettings

__all__ = [
    "IMAGE_SUFFIXES",
    "PAIR_KEYS",
    "ManifestError",
    "PairSpec",
    "Manifest",
    "load_manifest",
    "folder_manifest",
]

logger = logging.getLogger(__name__)

#: File name suffixes that folder mode picks up when no glob pattern is given.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")

#: Keys of a pair that are not transfer settings.
PAIR_KEYS = ("content", "style", "output")

_TOP_LEVEL_KEYS = ("defaults", "pairs", "content_dir", "style_dir", "content_glob", "style_glob")


class ManifestError(ValueError):
    """A manifest is invalid.

    Attributes:
        source: The manifest file, or a description of the folders.
        problems: One message per problem, each starting with its line (or
            ``defaults``/``folder``) so that every problem can be fixed in one pass.
    """

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = list(problems)
        listing = "\n".join(f"  {problem}" for problem in self.problems)
        super().__init__(f"Invalid manifest {source} ({len(self.problems)} problems):\n{listing}")

    def __reduce__(self):
        return type(self), (self.source, self.problems)


@dataclasses.dataclass(frozen=True)
class PairSpec:
    """One content/style pair as the manifest states it.

    Attributes:
        content: Absolute path of the content image.
        style: Absolute path of the style image.
        output: The ``output`` value of the manifest, relative to the output
            folder, or ``None`` for the default name.
        settings: The pair's settings, the manifest defaults merged in.
        location: Where the pair comes from, such as ``line 7``, for messages.
    """

    content: Path
    style: Path
    output: str | None
    settings: TransferSettings
    location: str


@dataclasses.dataclass
class Manifest:
    """Pairs read from a manifest file or two folders.

    Attributes:
        source: The manifest path, or ``None`` for folder mode without a file.
        base_dir: Folder that relative paths resolve against.
        pairs: Every pair that parsed, even when other lines have problems.
        problems: Every problem found, each starting with its location.
        rejected_outputs: ``(location, output)`` of pairs left out because of
            problems, so that the plan can still check where they would write.
        image_folders: ``(location, folder)`` of each folder whose images
            folder mode pairs, resolved.
    """

    source: Path | None
    base_dir: Path
    pairs: list[PairSpec]
    problems: list[str]
    rejected_outputs: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    image_folders: list[tuple[str, Path]] = dataclasses.field(default_factory=list)

    @property
    def name(self) -> str:
        """The manifest's path, or ``folder mode`` without a file."""
        return str(self.source) if self.source is not None else "folder mode"

    def raise_for_problems(self) -> None:
        """Raise `ManifestError` listing every problem, if there is one."""
        if self.problems:
            raise ManifestError(self.name, self.problems)


def load_manifest(path: str | os.PathLike[str], *, defaults: Mapping[str, Any] | None = None) -> Manifest:
    """Read a YAML or CSV manifest and check every pair.

    The format follows the suffix: ``.yaml``/``.yml`` or ``.csv``. Problems do
    not raise; they are collected in ``Manifest.problems`` so that a caller can
    print them all (call `Manifest.raise_for_problems` to raise).

    Args:
        path: The manifest file.
        defaults: Settings that replace those of the manifest's ``defaults:``
            mapping, such as ``nst run --set``. A pair's own values still win.
            Defaults to none.

    Raises:
        ManifestError: If the file is missing, unreadable or has an unknown suffix.
    """
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise ManifestError(str(path), ["manifest file not found. Check the path"])
    suffix = path.suffix.lower()
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise ManifestError(str(path), [f"cannot read the manifest: {error.strerror}"]) from error
    try:
        text = _decode(raw)
    except UnicodeDecodeError as error:
        raise ManifestError(
            str(path), [f"the manifest is not UTF-8 text (byte {error.start}). Save it as UTF-8"]
        ) from error

    manifest = Manifest(source=path, base_dir=path.parent, pairs=[], problems=[])
    if suffix in (".yaml", ".yml"):
        _read_yaml(text, manifest, defaults or {})
    elif suffix == ".csv":
        _read_csv(text, manifest, defaults or {})
    else:
        raise ManifestError(str(path), [f"unknown manifest format '{suffix}'. Use .yaml, .yml or .csv"])
    if not manifest.pairs and not manifest.problems:
        manifest.problems.append("the manifest lists no pairs. Add 'pairs:' or 'content_dir:' and 'style_dir:'")
    return manifest


def folder_manifest(
    content_dir: str | os.PathLike[str],
    style_dir: str | os.PathLike[str],
    *,
    content_glob: str | None = None,
    style_glob: str | None = None,
    defaults: Mapping[str, Any] | None = None,
    base_dir: str | os.PathLike[str] | None = None,
) -> Manifest:
    """List every content image with every style image.

    Args:
        content_dir: Folder of content images.
        style_dir: Folder of style images.
        content_glob: Pattern that selects content files, such as ``*.jpg``.
            Defaults to every file with a suffix in `IMAGE_SUFFIXES`.
        style_glob: The same for style files.
        defaults: Settings of every pair. Defaults to ``TransferSettings()``.
        base_dir: Folder that relative folders resolve against. Defaults to
            the working directory.
    """
    base = Path(base_dir).resolve() if base_dir is not None else Path.cwd()
    manifest = Manifest(source=None, base_dir=base, pairs=[], problems=[])
    settings = _settings_or_problems(defaults or {}, None, "run defaults", manifest.problems)
    if settings is None:
        return manifest
    _add_folder_pairs(manifest, content_dir, style_dir, content_glob, style_glob, settings, "folder")
    return manifest


def _decode(raw: bytes) -> str:
    # A spreadsheet saves UTF-8 with a byte-order mark; "utf-8-sig" drops it.
    text = raw.decode("utf-8-sig")
    return text.replace("\r\n", "\n").replace("\r", "\n")


# --- YAML -------------------------------------------------------------------


def _read_yaml(text: str, manifest: Manifest, run_defaults: Mapping[str, Any]) -> None:
    try:
        document = yaml.safe_load(text)
        # The node tree carries line numbers; safe_load's plain values do not.
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error)
        manifest.problems.append(f"{where}invalid YAML: {problem}")
        return
    if document is None:
        return
    if not isinstance(document, dict):
        manifest.problems.append(
            f"line 1: the manifest must be a mapping with 'pairs:' or 'content_dir:'. Got {type(document).__name__}"
        )
        return

    lines = _key_lines(root)
    for key in document:
        if key not in _TOP_LEVEL_KEYS:
            manifest.problems.append(
                f"line {lines.get(key, '?')}: unknown key '{key}'. Known keys: {', '.join(_TOP_LEVEL_KEYS)}"
            )

    defaults = document.get("defaults") or {}
    defaults_line = lines.get("defaults", "?")
    if not isinstance(defaults, dict):
        manifest.problems.append(f"line {defaults_line}: 'defaults' must be a mapping of settings")
        defaults = {}
    base = _settings_or_problems(defaults, None, f"line {defaults_line} (defaults)", manifest.problems)
    base = _with_run_defaults(base, run_defaults, manifest.problems)

    pairs = document.get("pairs")
    if pairs is not None:
        _read_yaml_pairs(pairs, _item_lines(root, "pairs"), lines.get("pairs", "?"), base, manifest)

    if "content_dir" in document or "style_dir" in document:
        location = f"line {lines.get('content_dir', lines.get('style_dir', '?'))}"
        for key in ("content_dir", "style_dir"):
            if not isinstance(document.get(key), str):
                manifest.problems.append(f"{location}: folder mode needs '{key}:' with a folder path")
        for key in ("content_glob", "style_glob"):
            if document.get(key) is not None and not isinstance(document[key], str):
                manifest.problems.append(f"line {lines.get(key, '?')}: '{key}' must be a glob pattern such as '*.jpg'")
        if base is not None and not any(p.startswith(location) for p in manifest.problems):
            _add_folder_pairs(
                manifest,
                document["content_dir"],
                document["style_dir"],
                document.get("content_glob"),
                document.get("style_glob"),
                base,
                location,
            )


def _read_yaml_pairs(
    pairs: Any, item_lines: list[int], pairs_line: Any, base: TransferSettings | None, manifest: Manifest
) -> None:
    if not isinstance(pairs, list):
        manifest.problems.append(f"line {pairs_line}: 'pairs' must be a list of {{content, style}} mappings")
        return
    for index, entry in enumerate(pairs):
        line = item_lines[index] if index < len(item_lines) else "?"
        location = f"line {line}"
        if not isinstance(entry, dict):
            manifest.problems.append(f"{location}: a pair must be a mapping with 'content' and 'style'. Got {entry!r}")
            continue
        _add_pair(manifest, entry, base, location)


def _key_lines(root: yaml.Node | None) -> dict[Any, int]:
    if not isinstance(root, yaml.MappingNode):
        return {}
    return {key.value: key.start_mark.line + 1 for key, _ in root.value}


def _item_lines(root: yaml.Node | None, key: str) -> list[int]:
    if not isinstance(root, yaml.MappingNode):
        return []
    for key_node, value_node in root.value:
        if key_node.value == key and isinstance(value_node, yaml.SequenceNode):
            return [item.start_mark.line + 1 for item in value_node.value]
    return []


# --- CSV --------------------------------------------------------------------


def _read_csv(text: str, manifest: Manifest, run_defaults: Mapping[str, Any]) -> None:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as error:
        manifest.problems.append(f"line 1: invalid CSV: {error}")
        return
    columns = [name.strip() for name in header]
    known = set(PAIR_KEYS) | set(TransferSettings.field_names())
    for name in columns:
        if name and name not in known:
            manifest.problems.append(
                f"line 1: unknown column '{name}'. Known columns: content, style, output and the settings "
                f"{', '.join(TransferSettings.field_names())}"
            )
    for key in ("content", "style"):
        if key not in columns:
            manifest.problems.append(f"line 1: the header must name a '{key}' column")
    if any(problem.startswith("line 1:") for problem in manifest.problems):
        return

    base = _with_run_defaults(TransferSettings(), run_defaults, manifest.problems)
    if base is None:
        return
    line = reader.line_num + 1
    try:
        for cells in reader:
            location = f"line {line}"
            line = reader.line_num + 1
            if not any(cell.strip() for cell in cells):
                continue
            if len(cells) > len(columns):
                manifest.problems.append(
                    f"{location}: {len(cells)} cells but the header names {len(columns)} columns. "
                    "Quote cells that contain commas"
                )
                continue
            entry = {name: cell.strip() for name, cell in zip(columns, cells) if name}
            _add_pair(manifest, entry, base, location)
    except csv.Error as error:
        manifest.problems.append(f"line {reader.line_num}: invalid CSV: {error}")


# --- shared checks ----------------------------------------------------------


def _add_pair(manifest: Manifest, entry: Mapping[str, Any], base: TransferSettings | None, location: str) -> None:
    problems = manifest.problems
    count = len(problems)
    content = _image_path(entry.get("content"), "content", manifest.base_dir, location, problems)
    style = _image_path(entry.get("style"), "style", manifest.base_dir, location, problems)
    output = entry.get("output")
    if output is not None and not isinstance(output, str):
        problems.append(f"{location}: output must be a file name such as 'portrait.png'. Got {output!r}")
    output = output.strip() if isinstance(output, str) and output.strip() else None

    overrides = {key: value for key, value in entry.items() if key not in PAIR_KEYS}
    settings = _settings_or_problems(overrides, base, location, problems) if base is not None else None
    if len(problems) == count and content is not None and style is not None and settings is not None:
        manifest.pairs.append(PairSpec(content, style, output, settings, location))
    elif output is not None:
        manifest.rejected_outputs.append((location, output))


def _with_run_defaults(
    base: TransferSettings | None, run_defaults: Mapping[str, Any], problems: list[str]
) -> TransferSettings | None:
    if base is None or not run_defaults:
        return base
    return _settings_or_problems(run_defaults, base, "run defaults", problems)


def _settings_or_problems(
    values: Mapping[str, Any], base: TransferSettings | None, location: str, problems: list[str]
) -> TransferSettings | None:
    try:
        return TransferSettings.from_mapping(values, base=base)
    except SettingsError as error:
        problems.extend(f"{location}: {problem}" for problem in error.problems)
        return None


def _image_path(value: Any, key: str, base_dir: Path, location: str, problems: list[str]) -> Path | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        problems.append(f"{location}: missing '{key}' image path")
        return None
    if not isinstance(value, str):
        problems.append(f"{location}: {key} must be a file path. Got {value!r}")
        return None
    path = (base_dir / Path(value.strip()).expanduser()).resolve()
    problem = _unreadable_reason(path)
    if problem is not None:
        problems.append(f"{location}: {key} image '{value}' {problem} (resolved to {path})")
        return None
    return path


def _unreadable_reason(path: Path) -> str | None:
    if not path.exists():
        return "not found. Paths are relative to the manifest's folder"
    if not path.is_file():
        return "is not a file"
    try:
        with path.open("rb") as handle:
            handle.read(1)
    except OSError as error:
        return f"cannot be read: {error.strerror}"
    return None


def _add_folder_pairs(
    manifest: Manifest,
    content_dir: str | os.PathLike[str],
    style_dir: str | os.PathLike[str],
    content_glob: str | None,
    style_glob: str | None,
    settings: TransferSettings,
    location: str,
) -> None:
    contents = _list_images(content_dir, content_glob, "content", manifest, location)
    styles = _list_images(style_dir, style_glob, "style", manifest, location)
    for content in contents:
        for style in styles:
            manifest.pairs.append(PairSpec(content, style, None, settings, f"{location} {content.name} x {style.name}"))


def _list_images(
    folder: str | os.PathLike[str], pattern: str | None, kind: str, manifest: Manifest, location: str
) -> list[Path]:
    path = (manifest.base_dir / Path(folder).expanduser()).resolve()
    manifest.image_folders.append((location, path))
    if not path.is_dir():
        manifest.problems.append(f"{location}: {kind} folder '{folder}' not found (resolved to {path})")
        return []
    if pattern:
        files = [item for item in path.glob(pattern) if item.is_file()]
    else:
        files = [item for item in path.iterdir() if item.is_file() and item.suffix.lower() in IMAGE_SUFFIXES]
    files.sort()
    if not files:
        expected = f"matching '{pattern}'" if pattern else f"with a suffix in {', '.join(IMAGE_SUFFIXES)}"
        manifest.problems.append(f"{location}: no {kind} images {expected} in '{path}'")
    readable = []
    for item in files:
        reason = _unreadable_reason(item)
        if reason is None:
            readable.append(item)
        else:
            manifest.problems.append(f"{location}: {kind} image '{item}' {reason}")
    return readable
