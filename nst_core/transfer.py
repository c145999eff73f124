"""Gatys-style transfer: optimise the pixels of a target image.

The target starts as the content image (or noise) and is updated so that its
MobileNetV2 features match the content image's and its Gram matrices match the
style image's::

    loss = content_weight * content + style_weight * style + tv_weight * tv

:func:`transfer` runs one pair; :func:`transfer_batch` runs several pairs of
the same size as one batch, which keeps a GPU busy and gives every pair what a
solo run would give it (Adam updates each pixel independently, and every loss
is computed per batch item).
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from PIL import Image

from .devices import parse_device
from .errors import NSTError, NonFiniteLossError
from .features import FeatureExtractor, load_feature_extractor
from .images import SAVE_FORMATS, ImageSource, load_image, save_image, tensor_to_image
from .losses import content_loss, gram_matrix, style_loss, total_variation
from .settings import TransferSettings
from .weights import DEFAULT_WEIGHTS, WeightsSpec, weights_id

__all__ = ["transfer", "transfer_batch", "TransferResult", "LossHistory", "Timings", "ProgressCallback"]

#: Called after each optimiser step with the 1-based step and the step count.
ProgressCallback = Callable[[int, int], None]

# Reading losses back from a GPU waits for it, so finiteness is checked only
# every few steps. The error still names the first non-finite step.
_FINITE_CHECK_INTERVAL = 10


@dataclasses.dataclass
class LossHistory:
    """Losses of every step, as computed before that step's update.

    Attributes:
        total: Weighted total loss per step.
        content: Unweighted content loss per step.
        style: Unweighted style loss (summed over layers with their layer
            weights) per step.
        tv: Unweighted total-variation loss per step; zeros when
            ``tv_weight`` is 0.
    """

    total: list[float]
    content: list[float]
    style: list[float]
    tv: list[float]

    def __len__(self) -> int:
        return len(self.total)

    def to_rows(self) -> list[dict[str, float]]:
        """Return one dict per step with keys ``step``, ``total_loss``,
        ``content_loss``, ``style_loss`` and ``tv_loss``; steps count from 1."""
        return [
            {"step": index + 1, "total_loss": total, "content_loss": content, "style_loss": style, "tv_loss": tv}
            for index, (total, content, style, tv) in enumerate(zip(self.total, self.content, self.style, self.tv))
        ]


@dataclasses.dataclass
class Timings:
    """Wall-clock seconds spent in each phase of one transfer.

    For a batch, decoding and saving are timed per pair, while feature
    extraction and optimisation are shared by the batch and reported in full
    for each pair.
    """

    decode: float = 0.0
    features: float = 0.0
    optimize: float = 0.0
    save: float = 0.0

    @property
    def total(self) -> float:
        """Sum of all phases."""
        return self.decode + self.features + self.optimize + self.save


@dataclasses.dataclass
class TransferResult:
    """The stylised image of one pair, with its losses, history and costs.

    Attributes:
        image: The stylised image, 8-bit RGB.
        output: Where the image was saved, or ``None``.
        width: Width of the stylised image in pixels.
        height: Height of the stylised image in pixels.
        content_loss: Unweighted content loss of the last step.
        style_loss: Unweighted style loss of the last step.
        tv_loss: Unweighted total-variation loss of the last step.
        total_loss: Weighted total loss of the last step.
        history: Losses of every step.
        timings: Seconds per phase.
        device: The device the optimisation ran on, such as ``"cuda:0"``.
        peak_memory_bytes: Peak GPU memory allocated on a CUDA device, or the
            process's peak resident memory on the CPU.
        steps: Number of optimiser steps run.
        settings: The settings used.
        weights: Identity of the weights used, see
            :func:`~nst_core.weights.weights_id`.
    """

    image: Image.Image
    output: Path | None
    width: int
    height: int
    content_loss: float
    style_loss: float
    tv_loss: float
    total_loss: float
    history: LossHistory
    timings: Timings
    device: str
    peak_memory_bytes: int | None
    steps: int
    settings: TransferSettings
    weights: str


def transfer(
    content_image: ImageSource,
    style_image: ImageSource,
    settings: TransferSettings | None = None,
    *,
    weights: WeightsSpec = DEFAULT_WEIGHTS,
    device: str | torch.device | None = None,
    output: str | os.PathLike | None = None,
    metadata: Mapping[str, str] | None = None,
    progress: ProgressCallback | None = None,
) -> TransferResult:
    """Stylise one content image with one style image.

    Args:
        content_image: Path of the content image, or a PIL image.
        style_image: Path of the style image, or a PIL image.
        settings: Transfer settings. Defaults to ``TransferSettings()``.
        weights: MobileNetV2 weights, see :mod:`nst_core.weights`. Defaults to
            ``"IMAGENET1K_V1"``.
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``. Defaults to the first GPU
            when there is one, else the CPU.
        output: Where to save the stylised image (.png or .jpg), written
            atomically. Defaults to not saving.
        metadata: Extra text items for the saved PNG. Defaults to none.
        progress: Called after each step with the step and the step count.
            Defaults to none.

    Returns:
        The stylised image with its losses, history and timings.

    Raises:
        ImageError: If an image cannot be decoded or is too small.
        WeightsError: If the weights cannot be loaded.
        NonFiniteLossError: If the loss becomes NaN or infinite.
        torch.OutOfMemoryError: If the device runs out of memory.
    """
    (result,) = transfer_batch(
        [(content_image, style_image)],
        settings,
        weights=weights,
        device=device,
        outputs=[output],
        metadata=metadata,
        progress=progress,
    )
    return result


def transfer_batch(
    pairs: Sequence[tuple[ImageSource, ImageSource]],
    settings: TransferSettings | None = None,
    *,
    weights: WeightsSpec = DEFAULT_WEIGHTS,
    device: str | torch.device | None = None,
    outputs: Sequence[str | os.PathLike | None] | None = None,
    metadata: Mapping[str, str] | None = None,
    progress: ProgressCallback | None = None,
    return_exceptions: bool = False,
) -> list[TransferResult | NSTError]:
    """Stylise several pairs whose content images resize to the same shape.

    The targets are optimised together as one batch. With Adam each pair gets
    what :func:`transfer` would give it, up to float rounding. L-BFGS couples
    all pixels of its parameter through the line search, so with
    ``optimizer="lbfgs"`` the pairs run one after another instead.

    Args:
        pairs: (content image, style image) pairs, paths or PIL images.
        settings: Settings shared by every pair. Defaults to
            ``TransferSettings()``.
        weights: See :func:`transfer`.
        device: See :func:`transfer`.
        outputs: One save path (or ``None``) per pair. Defaults to not saving.
        metadata: See :func:`transfer`.
        progress: See :func:`transfer`.
        return_exceptions: Return a pair's ``NSTError`` (such as a non-finite
            loss) in its place instead of raising it, so that the other pairs
            of the batch finish. Defaults to ``False``.

    Returns:
        One result per pair, in order.

    Raises:
        ValueError: If ``pairs`` is empty, ``outputs`` has another length, or
            the content images resize to different shapes.
        ImageError, WeightsError, NonFiniteLossError, torch.OutOfMemoryError:
            As for :func:`transfer`.
    """
    settings = settings if settings is not None else TransferSettings()
    if not isinstance(settings, TransferSettings):
        raise TypeError(f"settings must be a TransferSettings. Got {type(settings).__name__}")
    if not pairs:
        raise ValueError("pairs must hold at least one (content image, style image) pair")
    outputs = list(outputs) if outputs is not None else [None] * len(pairs)
    if len(outputs) != len(pairs):
        raise ValueError(f"outputs must have one entry per pair ({len(pairs)}). Got {len(outputs)}")
    _check_outputs(pairs, outputs)
    if settings.optimizer == "lbfgs" and len(pairs) > 1:
        results = []
        for pair, output in zip(pairs, outputs):
            results.extend(
                transfer_batch(
                    [pair], settings, weights=weights, device=device, outputs=[output],
                    metadata=metadata, progress=progress, return_exceptions=return_exceptions,
                )
            )
        return results

    device = parse_device(device)
    _reset_peak_memory(device)
    decode_started = time.perf_counter()
    content = _load_contents([pair[0] for pair in pairs], settings)
    styles = [_load(pair[1], settings, settings.effective_style_size) for pair in pairs]
    decode_seconds = (time.perf_counter() - decode_started) / len(pairs)

    features_started = time.perf_counter()
    extractor = load_feature_extractor(weights, device, settings.deepest_layer, exact=settings.exact_features)
    content = content.to(device)
    objective = _Objective(extractor, settings, content, [style.to(device) for style in styles])
    features_seconds = _elapsed(features_started, device)

    optimize_started = time.perf_counter()
    target, history, failures = _optimize(objective, content, settings, progress)
    optimize_seconds = _elapsed(optimize_started, device)

    return _finish(
        pairs, outputs, target, history, failures, settings, weights, device, metadata,
        Timings(decode=decode_seconds, features=features_seconds, optimize=optimize_seconds),
        return_exceptions,
    )


def _check_outputs(
    pairs: Sequence[tuple[ImageSource, ImageSource]],
    outputs: Sequence[str | os.PathLike | None],
) -> None:
    # Checked before optimising, so that a bad path fails in a moment rather
    # than after minutes of work, and a result never replaces its own input.
    inputs = {
        Path(source).resolve() for pair in pairs for source in pair if not isinstance(source, Image.Image)
    }
    for output in outputs:
        if output is None:
            continue
        path = Path(output)
        if path.suffix.lower() not in SAVE_FORMATS:
            raise ValueError(
                f"Cannot save '{path}': unsupported extension '{path.suffix}'. Use one of {', '.join(SAVE_FORMATS)}"
            )
        if path.resolve() in inputs:
            raise ValueError(f"Output '{path}' is also an input image. Choose another output path")
        if path.is_dir():
            raise ValueError(f"Output '{path}' is a directory. Give a file path such as '{path / 'result.png'}'")


def _load(source: ImageSource, settings: TransferSettings, size: int) -> torch.Tensor:
    return load_image(
        source,
        size=size,
        resize=settings.resize,
        min_side=settings.min_side,
        max_image_pixels=settings.max_image_pixels,
    )


def _load_contents(sources: Sequence[ImageSource], settings: TransferSettings) -> torch.Tensor:
    images = [_load(source, settings, settings.size) for source in sources]
    shapes = {tuple(image.shape[-2:]) for image in images}
    if len(shapes) > 1:
        listed = ", ".join(f"'{source}': {image.shape[-1]}x{image.shape[-2]}" for source, image in zip(sources, images))
        raise ValueError(
            f"Content images of one batch must resize to the same width and height. Got {listed}. "
            "Group pairs by shape or use resize='square'"
        )
    return torch.cat(images)


class _Objective:
    """The weighted loss of a batch of targets against fixed content and style."""

    def __init__(
        self,
        extractor: FeatureExtractor,
        settings: TransferSettings,
        content: torch.Tensor,
        styles: Sequence[torch.Tensor],
    ) -> None:
        self.extractor = extractor
        self.settings = settings
        self.layers = sorted(set(settings.content_layers) | set(settings.style_layers))
        with torch.no_grad():
            content_features = extractor(content, settings.content_layers, normalize=settings.normalize)
            self.content_targets = {layer: content_features[layer] for layer in settings.content_layers}
            # The style Grams of a batch are stacked so that item i compares
            # against its own style. Repeated style images are computed once.
            grams_by_image: dict[int, dict[int, torch.Tensor]] = {}
            per_item = []
            for style in styles:
                key = id(style)
                if key not in grams_by_image:
                    features = extractor(style, settings.style_layers, normalize=settings.normalize)
                    grams_by_image[key] = {layer: gram_matrix(features[layer]) for layer in settings.style_layers}
                per_item.append(grams_by_image[key])
            self.style_targets = {
                layer: torch.cat([grams[layer] for grams in per_item]) for layer in settings.style_layers
            }

    def __call__(self, target: torch.Tensor) -> tuple[torch.Tensor, ...]:
        settings = self.settings
        features = self.extractor(target, self.layers, normalize=settings.normalize)
        content = sum(content_loss(features[layer], self.content_targets[layer]) for layer in settings.content_layers)
        style = sum(
            weight * style_loss(gram_matrix(features[layer]), self.style_targets[layer])
            for layer, weight in zip(settings.style_layers, settings.style_layer_weights)
        )
        if settings.tv_weight > 0:
            tv = total_variation(target)
        else:
            tv = torch.zeros_like(content)
        total = settings.content_weight * content + settings.style_weight * style + settings.tv_weight * tv
        return total, content, style, tv


def _initial_target(content: torch.Tensor, settings: TransferSettings) -> torch.Tensor:
    if settings.init == "content":
        return content.detach().clone().requires_grad_(True)
    generator = torch.Generator().manual_seed(settings.seed)
    noise = torch.rand(content.shape, generator=generator, dtype=content.dtype)
    return noise.to(content.device).requires_grad_(True)


def _optimize(
    objective: _Objective,
    content: torch.Tensor,
    settings: TransferSettings,
    progress: ProgressCallback | None,
) -> tuple[torch.Tensor, torch.Tensor, dict[int, NonFiniteLossError]]:
    # Returns the final target, a (steps, 4, batch) tensor of total, content,
    # style and TV losses, and the items whose loss became non-finite.
    target = _initial_target(content, settings)
    batch = target.shape[0]
    history = torch.zeros(settings.steps, 4, batch, device=target.device)
    alive = torch.ones(batch, dtype=torch.bool, device=target.device)
    failures: dict[int, NonFiniteLossError] = {}
    checked = 0

    if settings.optimizer == "adam":
        optimizer = torch.optim.Adam([target], lr=settings.learning_rate)
    else:
        optimizer = torch.optim.LBFGS(
            [target], lr=settings.learning_rate, max_iter=1, line_search_fn="strong_wolfe"
        )

    for step in range(settings.steps):
        recorded = False

        def closure() -> torch.Tensor:
            nonlocal recorded
            losses = objective(target)
            if not recorded:
                history[step] = torch.stack(losses).detach()
                recorded = True
            optimizer.zero_grad(set_to_none=True)
            # Items that already failed are masked out so that their NaNs
            # cannot reach the loss the other items are optimised with.
            loss = torch.where(alive, losses[0], torch.zeros_like(losses[0])).sum()
            loss.backward()
            return loss

        if settings.optimizer == "adam":
            closure()
            optimizer.step()
        else:
            optimizer.step(closure)

        if progress is not None:
            progress(step + 1, settings.steps)
        last = step + 1 == settings.steps
        if (step + 1) % _FINITE_CHECK_INTERVAL == 0 or last:
            _check_finite(history, checked, step + 1, alive, failures)
            checked = step + 1
            if not bool(alive.any()):
                break
    return target.detach(), history, failures


def _check_finite(
    history: torch.Tensor,
    start: int,
    stop: int,
    alive: torch.Tensor,
    failures: dict[int, NonFiniteLossError],
) -> None:
    finite = torch.isfinite(history[start:stop]).all(dim=1).cpu()
    for item in range(history.shape[2]):
        if item in failures or bool(finite[:, item].all()):
            continue
        step = start + int((~finite[:, item]).nonzero()[0])
        values = history[step, :, item].tolist()
        failures[item] = NonFiniteLossError(
            step,
            f"Loss became non-finite at step {step + 1} (total {values[0]}, content {values[1]}, "
            f"style {values[2]}, tv {values[3]}). Lower learning_rate or style_weight",
        )
        alive[item] = False


def _finish(
    pairs: Sequence[tuple[ImageSource, ImageSource]],
    outputs: Sequence[str | os.PathLike | None],
    target: torch.Tensor,
    history: torch.Tensor,
    failures: dict[int, NonFiniteLossError],
    settings: TransferSettings,
    weights: WeightsSpec,
    device: torch.device,
    metadata: Mapping[str, str] | None,
    shared_timings: Timings,
    return_exceptions: bool,
) -> list[TransferResult | NSTError]:
    identity = weights_id(weights)
    history_rows = history.cpu()
    peak_memory = _peak_memory(device)
    stored = {
        "nst:settings": json.dumps(settings.to_dict(), sort_keys=True),
        "nst:settings_hash": settings.settings_hash(identity),
        "nst:weights": identity,
        **(metadata or {}),
    }

    results: list[TransferResult | NSTError] = []
    for item, output in enumerate(outputs):
        if item in failures:
            if not return_exceptions:
                raise failures[item]
            results.append(failures[item])
            continue
        timings = dataclasses.replace(shared_timings)
        save_started = time.perf_counter()
        image = tensor_to_image(target[item])
        path = save_image(image, output, metadata=stored) if output is not None else None
        timings.save = time.perf_counter() - save_started
        steps = settings.steps
        values = history_rows[:, :, item]
        final = values[steps - 1].tolist()
        results.append(
            TransferResult(
                image=image,
                output=path,
                width=image.width,
                height=image.height,
                content_loss=final[1],
                style_loss=final[2],
                tv_loss=final[3],
                total_loss=final[0],
                history=LossHistory(*(values[:, index].tolist() for index in range(4))),
                timings=timings,
                device=str(device),
                peak_memory_bytes=peak_memory,
                steps=steps,
                settings=settings,
                weights=identity,
            )
        )
    return results


def _elapsed(started: float, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


def _reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_memory(device: torch.device) -> int | None:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    # ru_maxrss is in KiB on Linux and in bytes on macOS.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)
