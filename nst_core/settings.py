"""Transfer settings: one frozen, validated, hashable record per pair."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from typing import Any, Literal

__all__ = [
    "TransferSettings",
    "SettingsError",
    "MAX_SIZE",
    "MAX_STEPS",
    "NUM_FEATURE_BLOCKS",
    "DEFAULT_MAX_IMAGE_PIXELS",
]

#: Largest accepted ``size`` and ``style_size`` in pixels. At 4096 px a single
#: pair already needs several GiB of activations for the backward pass.
MAX_SIZE = 4096

#: Largest accepted ``steps``: far beyond where the losses stop improving.
MAX_STEPS = 100_000

#: Number of blocks in torchvision's ``mobilenet_v2().features``.
NUM_FEATURE_BLOCKS = 19

#: Pillow's own decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``).
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485

Optimizer = Literal["adam", "lbfgs"]
Init = Literal["content", "noise"]
Resize = Literal["fit", "square"]

_CHOICES = {
    "optimizer": ("adam", "lbfgs"),
    "init": ("content", "noise"),
    "resize": ("fit", "square"),
}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class SettingsError(ValueError):
    """One or more settings are invalid.

    Attributes:
        problems: One message per invalid setting, each naming the setting, the
            value given and what is accepted.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))

    def __reduce__(self):
        return type(self), (self.problems,)


@dataclasses.dataclass(frozen=True)
class TransferSettings:
    """Settings of one Gatys-style transfer.

    The total loss is ``content_weight * content + style_weight * style +
    tv_weight * tv``. With ``resize="square"``, ``size=256``,
    ``normalize=False`` and every other setting at its default, the loss is the
    one of the original MobileNetV2 script this project grew from.

    Args:
        size: Target size of the content image in pixels: the longest side with
            ``resize="fit"``, both sides with ``resize="square"``. Defaults to 512.
        style_size: The same for the style image. Defaults to ``size``.
        content_layers: Indices of the ``mobilenet_v2().features`` blocks whose
            outputs the content loss compares. Defaults to ``(7,)``.
        style_layers: Indices of the blocks whose Gram matrices the style loss
            compares. Defaults to ``(4, 7)``.
        style_layer_weights: Weight of each style layer, in the order of
            ``style_layers``. Defaults to 1 for each.
        content_weight: Weight of the content loss. Defaults to 1.
        style_weight: Weight of the style loss. Defaults to 1e5.
        tv_weight: Weight of the total-variation loss. Defaults to 0 (off).
        steps: Number of optimiser steps. Defaults to 200.
        learning_rate: Optimiser learning rate on the [0, 1] pixel scale.
            Defaults to 0.01.
        optimizer: ``"adam"`` or ``"lbfgs"``. Defaults to ``"adam"``.
        init: Start the target from the ``"content"`` image or from uniform
            ``"noise"``. Defaults to ``"content"``.
        seed: Seed of the random generator used for noise. Defaults to 0.
        normalize: Normalise the network input with the ImageNet mean and
            standard deviation. Defaults to ``True``.
        resize: ``"fit"`` keeps the aspect ratio, ``"square"`` squashes the
            image to ``size`` x ``size``. Defaults to ``"fit"``.
        exact_features: Run torchvision's network as it is, with separate
            BatchNorm layers and contiguous memory, so that losses match an
            unmodified MobileNetV2 to the last bit. The default folds
            BatchNorm into the convolutions and uses channels-last memory,
            which is about 1.4x faster on a CPU and equal up to float rounding.
            Adam's first steps move a pixel by about the learning rate however
            small its gradient is, so that rounding grows to about 1e-3 of the
            loss after 20 steps. Defaults to ``False``.
        min_side: Smallest accepted short side after resizing, in pixels. The
            default of 32 leaves block 7 (stride 16) a 2x2 feature map.
        max_image_pixels: Largest image in pixels that is decoded at all,
            Pillow's decompression-bomb guard. ``None`` turns the guard off.
            Defaults to Pillow's limit of 89,478,485.
    """

    size: int = 512
    style_size: int | None = None
    content_layers: tuple[int, ...] = (7,)
    style_layers: tuple[int, ...] = (4, 7)
    style_layer_weights: tuple[float, ...] | None = None
    content_weight: float = 1.0
    style_weight: float = 1e5
    tv_weight: float = 0.0
    steps: int = 200
    learning_rate: float = 0.01
    optimizer: Optimizer = "adam"
    init: Init = "content"
    seed: int = 0
    normalize: bool = True
    resize: Resize = "fit"
    exact_features: bool = False
    min_side: int = 32
    max_image_pixels: int | None = dataclasses.field(
        default=DEFAULT_MAX_IMAGE_PIXELS, metadata={"hashed": False}
    )

    def __post_init__(self) -> None:
        problems = _check(self)
        if problems:
            raise SettingsError(problems)
        if self.style_layer_weights is None:
            object.__setattr__(self, "style_layer_weights", (1.0,) * len(self.style_layers))

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """Return the names of every setting."""
        return tuple(field.name for field in dataclasses.fields(cls))

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any], *, base: TransferSettings | None = None) -> TransferSettings:
        """Build settings from loosely typed values, such as YAML or CSV cells.

        Strings are converted to the field's type (``"1e5"``, ``"true"``,
        ``"4,7"``), ``None`` and empty strings keep the value of ``base``.

        Args:
            mapping: Setting names and values.
            base: Settings whose values fill in what ``mapping`` leaves out.
                Defaults to ``TransferSettings()``.

        Raises:
            SettingsError: Listing every unknown name and invalid value at once.
        """
        base = base if base is not None else cls()
        names = set(cls.field_names())
        problems = []
        values = dataclasses.asdict(base)
        for key, raw in mapping.items():
            if key not in names:
                problems.append(f"unknown setting '{key}'. Known settings: {', '.join(sorted(names))}")
                continue
            if raw is None or (isinstance(raw, str) and not raw.strip()):
                continue
            try:
                values[key] = _convert(key, raw)
            except (TypeError, ValueError) as error:
                problems.append(str(error))
        if "style_layers" in mapping and "style_layer_weights" not in mapping:
            values["style_layer_weights"] = None
        try:
            settings = cls(**values)
        except SettingsError as error:
            problems.extend(error.problems)
        if problems:
            raise SettingsError(problems)
        return settings

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as plain JSON-compatible values."""
        values = dataclasses.asdict(self)
        for key in ("content_layers", "style_layers", "style_layer_weights"):
            values[key] = list(values[key])
        return values

    def settings_hash(self, *extra: object) -> str:
        """Return a short hash of every setting that changes the stylised image.

        Args:
            *extra: Further values that change the result, such as the weights
                identity; they are hashed after the settings.

        Returns:
            The first 12 hexadecimal digits of a SHA-256 over canonical JSON.
        """
        hashed = {
            field.name: value
            for field, value in zip(dataclasses.fields(self), self.to_dict().values())
            if field.metadata.get("hashed", True)
        }
        payload = json.dumps([hashed, [str(item) for item in extra]], sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]

    @property
    def effective_style_size(self) -> int:
        """Target size of the style image in pixels."""
        return self.style_size if self.style_size is not None else self.size

    @property
    def deepest_layer(self) -> int:
        """Index of the deepest feature block any loss reads."""
        return max(self.content_layers + self.style_layers)


def _convert(key: str, raw: Any) -> Any:
    field_type = {field.name: field.type for field in dataclasses.fields(TransferSettings)}[key]
    if key in ("content_layers", "style_layers"):
        return tuple(_to_int(key, item) for item in _to_sequence(key, raw))
    if key == "style_layer_weights":
        return tuple(_to_float(key, item) for item in _to_sequence(key, raw))
    if key in _CHOICES:
        return str(raw).strip().lower()
    if key in ("normalize", "exact_features"):
        return _to_bool(key, raw)
    if "float" in field_type:
        return _to_float(key, raw)
    if "int" in field_type:
        return _to_int(key, raw)
    return raw


def _to_sequence(key: str, raw: Any) -> list[Any]:
    if isinstance(raw, str):
        return [item for item in raw.replace(",", " ").split() if item]
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        return [raw]
    if isinstance(raw, (list, tuple)):
        return list(raw)
    raise TypeError(f"{key} must be a list of numbers. Got {raw!r}")


def _to_int(key: str, raw: Any) -> int:
    if isinstance(raw, bool):
        raise TypeError(f"{key} must be a whole number. Got {raw!r}")
    if isinstance(raw, int):
        return raw
    if isinstance(raw, float) and raw.is_integer():
        return int(raw)
    if isinstance(raw, str):
        text = raw.strip()
        try:
            return int(text)
        except ValueError:
            try:
                number = float(text)
            except ValueError:
                number = None
            if number is not None and number.is_integer():
                return int(number)
    raise TypeError(f"{key} must be a whole number. Got {raw!r}")


def _to_float(key: str, raw: Any) -> float:
    if isinstance(raw, bool):
        raise TypeError(f"{key} must be a number. Got {raw!r}")
    if isinstance(raw, (int, float)):
        return float(raw)
    if isinstance(raw, str):
        try:
            return float(raw.strip())
        except ValueError:
            pass
    raise TypeError(f"{key} must be a number. Got {raw!r}")


def _to_bool(key: str, raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise TypeError(f"{key} must be true or false. Got {raw!r}")


def _check(settings: TransferSettings) -> list[str]:
    problems = []

    def check_int(name: str, low: int, high: int | None) -> None:
        value = getattr(settings, name)
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"{name} must be a whole number. Got {value!r}")
        elif value < low or (high is not None and value > high):
            limit = f"between {low} and {high}" if high is not None else f"at least {low}"
            problems.append(f"{name} must be {limit}. Got {value}")

    def check_weight(name: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"{name} must be a number. Got {value!r}")
        elif not value >= 0 or value == float("inf"):
            problems.append(f"{name} must be a finite number of at least 0. Got {value}")

    check_int("size", 1, MAX_SIZE)
    if settings.style_size is not None:
        check_int("style_size", 1, MAX_SIZE)
    check_int("steps", 1, MAX_STEPS)
    check_int("seed", 0, 2**63 - 1)
    check_int("min_side", 1, MAX_SIZE)
    for name in ("size", "style_size"):
        value, minimum = getattr(settings, name), settings.min_side
        if isinstance(value, int) and isinstance(minimum, int) and 0 < value < minimum:
            problems.append(
                f"{name} must be at least min_side ({minimum} px), or no image could be used. Got {value}"
            )
    if settings.max_image_pixels is not None:
        check_int("max_image_pixels", 1, None)
    for name in ("content_weight", "style_weight", "tv_weight"):
        check_weight(name, getattr(settings, name))
    rate = settings.learning_rate
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate < float("inf"):
        problems.append(f"learning_rate must be a finite number above 0. Got {rate!r}")
    for name, choices in _CHOICES.items():
        value = getattr(settings, name)
        if value not in choices:
            problems.append(f"{name} must be one of {', '.join(choices)}. Got {value!r}")
    for name in ("normalize", "exact_features"):
        if not isinstance(getattr(settings, name), bool):
            problems.append(f"{name} must be true or false. Got {getattr(settings, name)!r}")

    for name in ("content_layers", "style_layers"):
        layers = getattr(settings, name)
        if not isinstance(layers, tuple) or not layers:
            problems.append(f"{name} must be a non-empty list of block indices. Got {layers!r}")
            continue
        for layer in layers:
            if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < NUM_FEATURE_BLOCKS:
                problems.append(
                    f"{name} must hold block indices from 0 to {NUM_FEATURE_BLOCKS - 1}. Got {layer!r}"
                )
        if len(set(layers)) != len(layers):
            problems.append(f"{name} must not repeat a block. Got {list(layers)}")
    weights = settings.style_layer_weights
    if weights is not None:
        if not isinstance(weights, tuple):
            problems.append(f"style_layer_weights must be a list of numbers. Got {weights!r}")
        else:
            if isinstance(settings.style_layers, tuple) and len(weights) != len(settings.style_layers):
                problems.append(
                    f"style_layer_weights must have one weight per style layer "
                    f"({len(settings.style_layers)}). Got {len(weights)}"
                )
            for weight in weights:
                check_weight("style_layer_weights", weight)
    return problems
