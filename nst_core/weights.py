"""Turning a weights specification into a MobileNetV2 ``features`` state dict.

A specification is one of:

- the name of a torchvision ``MobileNet_V2_Weights`` member, such as
  ``"IMAGENET1K_V1"`` (the default), downloaded and cached by torchvision under
  ``$TORCH_HOME/hub/checkpoints``;
- ``"random"`` or ``"random:SEED"``, freshly initialised weights for tests;
- the path of a local ``.pth`` file: torchvision's full checkpoint, or a state
  dict of ``features`` alone, with or without the ``features.`` prefix.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

import torch
from torchvision.models import MobileNet_V2_Weights, mobilenet_v2

from .errors import WeightsError

__all__ = ["DEFAULT_WEIGHTS", "WeightsSpec", "load_features_state_dict", "weights_id"]

#: Pinned on purpose: ``MobileNet_V2_Weights.DEFAULT`` is IMAGENET1K_V2, a
#: different checkpoint that would silently change every result.
DEFAULT_WEIGHTS = "IMAGENET1K_V1"

WeightsSpec = str | os.PathLike


def _enum_member(spec: str) -> MobileNet_V2_Weights | None:
    name = spec.removeprefix("MobileNet_V2_Weights.")
    if name == "DEFAULT":
        return None
    return MobileNet_V2_Weights.__members__.get(name)


def _reject_default(spec: str) -> None:
    if spec in ("DEFAULT", "MobileNet_V2_Weights.DEFAULT"):
        raise ValueError(
            f"Invalid weights '{spec}': DEFAULT moves with torchvision releases. "
            f"Name the checkpoint, for example '{DEFAULT_WEIGHTS}'"
        )


def _random_seed(spec: str) -> int | None:
    if spec == "random":
        return 0
    if spec.startswith("random:"):
        text = spec.removeprefix("random:")
        if not text.isdigit():
            raise ValueError(f"Invalid weights '{spec}'. Use 'random' or 'random:SEED' with a whole-number seed")
        return int(text)
    return None


def weights_id(spec: WeightsSpec = DEFAULT_WEIGHTS) -> str:
    """Return a stable identity of the weights, for settings hashes and reports.

    Args:
        spec: A weights specification. Defaults to ``"IMAGENET1K_V1"``.

    Returns:
        ``"IMAGENET1K_V1"`` for a torchvision member, ``"random:SEED"``, or
        ``"sha256:<16 hex digits>"`` of a local file's content.

    Raises:
        WeightsError: If a local file cannot be read.
        ValueError: If the specification matches none of the accepted forms.
    """
    text = os.fspath(spec)
    _reject_default(text)
    member = _enum_member(text)
    if member is not None:
        return member.name
    seed = _random_seed(text)
    if seed is not None:
        return f"random:{seed}"
    return f"sha256:{_file_digest(*_file_key(_existing_file(text)))[:16]}"


def load_features_state_dict(spec: WeightsSpec = DEFAULT_WEIGHTS) -> dict[str, torch.Tensor]:
    """Load the state dict of ``mobilenet_v2().features`` that a spec names.

    Args:
        spec: A weights specification. Defaults to ``"IMAGENET1K_V1"``.

    Returns:
        Parameters and buffers keyed like ``mobilenet_v2().features.state_dict()``
        (``"0.0.weight"``, ...), on the CPU.

    Raises:
        WeightsError: If the download fails, or the file cannot be read or does
            not hold MobileNetV2 features.
        ValueError: If the specification matches none of the accepted forms.
    """
    text = os.fspath(spec)
    _reject_default(text)
    member = _enum_member(text)
    if member is not None:
        return _download(member)
    seed = _random_seed(text)
    if seed is not None:
        return _random_features(seed)
    return dict(_load_file(*_file_key(_existing_file(text))))


def _existing_file(text: str) -> Path:
    path = Path(text).expanduser()
    if path.is_file():
        return path
    names = ", ".join(name for name in MobileNet_V2_Weights.__members__ if name != "DEFAULT")
    if path.exists():
        raise WeightsError(f"Weights path '{path}' is not a file. Pass a .pth state dict")
    raise WeightsError(
        f"Weights '{text}' not found: it is neither an existing file nor one of {names}, 'random' or 'random:SEED'"
    )


def _file_key(path: Path) -> tuple[str, int, int]:
    # The modification time and size make the caches below notice a file
    # replaced in place.
    stat = path.stat()
    return str(path.resolve()), stat.st_mtime_ns, stat.st_size


@functools.lru_cache(maxsize=8)
def _file_digest(path: str, mtime_ns: int, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@functools.lru_cache(maxsize=4)
def _load_file(path: str, mtime_ns: int, size: int) -> tuple[tuple[str, torch.Tensor], ...]:
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load raises many types for a bad file.
        raise WeightsError(
            f"Cannot read weights file '{path}': it is not a PyTorch checkpoint that torch.load accepts ({error}). "
            "Pass torchvision's mobilenet_v2 .pth file"
        ) from error
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(isinstance(value, torch.Tensor) for value in loaded.values()):
        raise WeightsError(
            f"Weights file '{path}' does not hold a state dict of tensors. "
            "Save it with torch.save(model.state_dict(), path)"
        )
    state = _features_only(loaded)
    _check_keys(state, f"weights file '{path}'")
    return tuple(state.items())


def _features_only(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if any(key.startswith("features.") for key in state):
        return {key.removeprefix("features."): value for key, value in state.items() if key.startswith("features.")}
    return {key: value for key, value in state.items() if not key.startswith("classifier.")}


@functools.lru_cache(maxsize=1)
def _expected_shapes() -> dict[str, torch.Size]:
    # Built on the meta device: shapes only, no memory and no weight init.
    with torch.device("meta"):
        return {key: value.shape for key, value in mobilenet_v2().features.state_dict().items()}


def _check_keys(state: dict[str, torch.Tensor], source: str) -> None:
    expected = _expected_shapes()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [key for key in expected if key in state and state[key].shape != expected[key]]
    if missing or unexpected or mismatched:
        details = []
        if missing:
            details.append(f"{len(missing)} missing keys (first: {missing[0]})")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected keys (first: {unexpected[0]})")
        if mismatched:
            details.append(f"{len(mismatched)} keys with other shapes (first: {mismatched[0]})")
        raise WeightsError(
            f"The {source} does not match torchvision's MobileNetV2 (width 1.0): {'; '.join(details)}. "
            "Pass torchvision's mobilenet_v2 checkpoint or a state dict of its features"
        )


def _download(member: MobileNet_V2_Weights) -> dict[str, torch.Tensor]:
    cache_dir = Path(torch.hub.get_dir()) / "checkpoints"
    try:
        state = member.get_state_dict(progress=False, check_hash=True)
    except Exception as error:  # urllib, ssl, socket and hash errors all end here.
        raise WeightsError(
            f"Cannot download MobileNetV2 weights {member.name} from {member.url} into {cache_dir}: {error}. "
            f"On a machine without internet access, download that file elsewhere and either copy it into "
            f"{cache_dir} or pass its path with --weights PATH (weights=PATH in Python)"
        ) from error
    state = _features_only(state)
    _check_keys(state, f"checkpoint {member.name}")
    return state


def _random_features(seed: int) -> dict[str, torch.Tensor]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return mobilenet_v2().features.state_dict()
