"""Decoding image files into RGB tensors, resizing them, and saving results.

Every file Pillow can read is accepted. Whatever its mode, an image comes out as
RGB values in [0, 1]: EXIF orientation applied, transparency composited over
white, and 16-bit or floating-point samples scaled by their real value range
instead of being clipped to 8 bits.
"""

from __future__ import annotations

import os
import tempfile
import threading
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

from .errors import ImageError, ImageTooSmallError
from .settings import DEFAULT_MAX_IMAGE_PIXELS

__all__ = [
    "ImageSource",
    "decode_image",
    "resized_shape",
    "load_image",
    "image_to_tensor",
    "tensor_to_image",
    "save_image",
    "SAVE_FORMATS",
]

ImageSource = str | os.PathLike | Image.Image

#: Output formats by file extension.
SAVE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}

def _current_umask() -> int:
    # The umask can only be read by setting it, so it is set straight back.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# Pillow's decompression-bomb limit is a module global, so opening a file with
# a limit of our own swaps it under a lock.
_PIXEL_LIMIT_LOCK = threading.Lock()
_HIGH_BIT_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


def decode_image(
    source: ImageSource,
    *,
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    size: int | None = None,
    resize: Literal["fit", "square"] = "fit",
) -> np.ndarray:
    """Decode an image file into an RGB array.

    Args:
        source: A file path or an already opened PIL image.
        max_image_pixels: Reject images with more pixels than this, before
            decoding them. ``None`` turns the check off. Defaults to Pillow's
            limit of 89,478,485 pixels.
        size: The size the caller resizes the image to afterwards, as in
            :func:`resized_shape`. A JPEG more than twice as large is decoded
            at a reduced scale (1/2, 1/4 or 1/8), which is several times
            faster and still leaves at least twice the pixels needed.
            Defaults to ``None``, a full decode.
        resize: The resize mode that goes with ``size``. Defaults to ``"fit"``.

    Returns:
        A float32 array of shape (height, width, 3) with values in [0, 1].

    Raises:
        ImageError: If the path is missing, a directory or empty, the file is
            not an image, is truncated, or exceeds ``max_image_pixels``.
    """
    decoded = _decode(source, max_image_pixels, size, resize)
    if isinstance(decoded, Image.Image):
        return np.asarray(decoded, dtype=np.float32) / 255.0
    return decoded


def _decode(
    source: ImageSource,
    max_image_pixels: int | None,
    size: int | None,
    resize: Literal["fit", "square"],
) -> Image.Image | np.ndarray:
    # Returns an 8-bit RGB image where the file contains 8-bit samples, so that
    # resizing rounds like Pillow and torchvision do, and a float32 array in
    # [0, 1] for 16-bit and floating-point files.
    if isinstance(source, Image.Image):
        return _to_rgb(ImageOps.exif_transpose(source), None)

    path = Path(source)
    if not path.exists():
        raise ImageError(path, "file not found. Check the path")
    if path.is_dir():
        raise ImageError(path, "is a directory, expected an image file")
    if path.stat().st_size == 0:
        raise ImageError(path, "file is empty")

    with _PIXEL_LIMIT_LOCK, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        saved_limit = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max_image_pixels
        try:
            image = Image.open(path)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            raise ImageError(
                path,
                f"{error}. Raise max_image_pixels (now {max_image_pixels}) if you trust this file",
            ) from error
        except UnidentifiedImageError as error:
            raise ImageError(path, "not an image file that Pillow can read") from error
        except OSError as error:
            raise ImageError(path, f"cannot be opened ({error})") from error
        finally:
            Image.MAX_IMAGE_PIXELS = saved_limit

    with image:
        try:
            if getattr(image, "n_frames", 1) > 1:
                image.seek(0)
            if size is not None and image.format == "JPEG":
                image.draft(None, tuple(2 * side for side in resized_shape(*image.size, size, resize)))
            image.load()
            image = ImageOps.exif_transpose(image)
        except (OSError, ValueError, SyntaxError) as error:
            raise ImageError(path, f"file is truncated or corrupt ({error})") from error
        return _to_rgb(image, path)


def _to_rgb(image: Image.Image, path: Path | None) -> Image.Image | np.ndarray:
    mode = image.mode
    if mode in _HIGH_BIT_MODES:
        values = np.asarray(image, dtype=np.float64)
        grey = _scale_high_bit(values, mode, path)
        return np.repeat(grey[:, :, None], 3, axis=2).astype(np.float32)

    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode in ("P", "L", "RGB", "1") and "transparency" in image.info
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _scale_high_bit(values: np.ndarray, mode: str, path: Path | None) -> np.ndarray:
    # 16-bit samples are scaled by the 16-bit range. Integer and float images
    # whose values do not fit a known range are stretched from min to max.
    if values.size == 0 or not np.isfinite(values).all():
        raise ImageError(path, f"{mode} image contains no finite pixel values")
    low, high = float(values.min()), float(values.max())
    if mode.startswith("I;16") or (mode == "I" and low >= 0 and high <= 65535 and high > 255):
        return values / 65535.0
    if low >= 0 and high <= 1 and mode == "F":
        return values
    if low >= 0 and high <= 255:
        return values / 255.0
    if high == low:
        return np.full_like(values, 0.5)
    return (values - low) / (high - low)


def resized_shape(
    width: int,
    height: int,
    size: int,
    resize: Literal["fit", "square"] = "fit",
) -> tuple[int, int]:
    """Return the (width, height) an image of the given size is resized to.

    Args:
        width: Width of the decoded image in pixels.
        height: Height of the decoded image in pixels.
        size: Target longest side, or both sides with ``resize="square"``.
        resize: ``"fit"`` keeps the aspect ratio, ``"square"`` does not.
            Defaults to ``"fit"``.
    """
    if resize == "square":
        return size, size
    scale = size / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def load_image(
    source: ImageSource,
    *,
    size: int,
    resize: Literal["fit", "square"] = "fit",
    min_side: int = 32,
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
) -> torch.Tensor:
    """Decode and resize an image into a batch of one RGB tensor.

    Args:
        source: A file path or an already opened PIL image.
        size: Target longest side in pixels, or both sides with
            ``resize="square"``.
        resize: ``"fit"`` keeps the aspect ratio, ``"square"`` does not.
            Defaults to ``"fit"``.
        min_side: Smallest accepted short side after resizing. Defaults to 32.
        max_image_pixels: See :func:`decode_image`.

    Returns:
        A float32 tensor of shape (1, 3, H, W) with values in [0, 1].

    Raises:
        ImageError: If the file cannot be decoded.
        ImageTooSmallError: If the short side after resizing is below
            ``min_side``.
    """
    path = None if isinstance(source, Image.Image) else Path(source)
    decoded = _decode(source, max_image_pixels, size, resize)

    if isinstance(decoded, Image.Image):
        width, height = decoded.size
    else:
        height, width = decoded.shape[:2]
    target = resized_shape(width, height, size, resize)
    _check_min_side(path, (width, height), target, min_side)

    if isinstance(decoded, Image.Image):
        resized = decoded.resize(target, Image.BILINEAR) if decoded.size != target else decoded
        return image_to_tensor(np.asarray(resized, dtype=np.float32) / 255.0)
    return image_to_tensor(_resize_float(decoded, target))


def _check_min_side(
    path: Path | None,
    original: tuple[int, int],
    target: tuple[int, int],
    min_side: int,
) -> None:
    if min(target) < min_side:
        raise ImageTooSmallError(
            path,
            f"resizing {original[0]}x{original[1]} to {target[0]}x{target[1]} leaves a short side of "
            f"{min(target)} px, below min_side {min_side} px. Use a larger size or a less elongated image",
        )


def _resize_float(pixels: np.ndarray, target: tuple[int, int]) -> np.ndarray:
    height, width = pixels.shape[:2]
    if (width, height) == target:
        return pixels
    # The same antialiased BILINEAR filter as for 8-bit images, run on each
    # channel as a float image to keep 16-bit and float precision.
    channels = [
        np.asarray(Image.fromarray(np.ascontiguousarray(pixels[:, :, index])).resize(target, Image.BILINEAR))
        for index in range(3)
    ]
    return np.stack(channels, axis=2)


def image_to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """Convert an (H, W, 3) array in [0, 1] into a (1, 3, H, W) float32 tensor."""
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32)).unsqueeze(0)


def tensor_to_image(tensor: torch.Tensor) -> Image.Image:
    """Convert a (3, H, W) or (1, 3, H, W) tensor into an 8-bit RGB image.

    Values are clamped to [0, 1] and rounded to the nearest 8-bit level.
    """
    if tensor.dim() == 4:
        if tensor.shape[0] != 1:
            raise ValueError(f"Expected a batch of one image. Got shape {tuple(tensor.shape)}")
        tensor = tensor[0]
    if tensor.dim() != 3 or tensor.shape[0] != 3:
        raise ValueError(f"Expected a tensor of shape (3, H, W). Got {tuple(tensor.shape)}")
    array = tensor.detach().to("cpu", torch.float32).clamp(0, 1).mul(255).round().to(torch.uint8)
    return Image.fromarray(array.permute(1, 2, 0).numpy(), mode="RGB")


def save_image(
    image: Image.Image | torch.Tensor,
    path: str | os.PathLike,
    *,
    metadata: Mapping[str, str] | None = None,
    quality: int = 95,
) -> Path:
    """Write an image atomically, as PNG or JPEG by the file extension.

    The image is written to a temporary file in the same folder and renamed
    over ``path``, so a reader never sees a partial file, even when the
    process is killed half-way.

    Args:
        image: An RGB PIL image, or a tensor accepted by :func:`tensor_to_image`.
        path: Destination; its extension picks the format (.png, .jpg, .jpeg).
        metadata: Text items stored in the PNG. Ignored for JPEG. Defaults to
            none.
        quality: JPEG quality from 1 to 95. Defaults to 95.

    Returns:
        The path written.

    Raises:
        ValueError: If the extension is not one of the supported formats.
    """
    path = Path(path)
    image_format = SAVE_FORMATS.get(path.suffix.lower())
    if image_format is None:
        raise ValueError(
            f"Cannot save '{path}': unsupported extension '{path.suffix}'. "
            f"Use one of {', '.join(SAVE_FORMATS)}"
        )
    if isinstance(image, torch.Tensor):
        image = tensor_to_image(image)

    options: dict = {}
    if image_format == "PNG":
        info = PngImagePlugin.PngInfo()
        for key, value in (metadata or {}).items():
            info.add_itxt(key, str(value))
        options["pnginfo"] = info
    else:
        options["quality"] = quality

    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as stream:
            image.save(stream, format=image_format, **options)
            stream.flush()
            os.fsync(stream.fileno())
        # mkstemp creates the file readable by its owner alone; give it the
        # permissions a plain open() would, as set by the umask.
        os.chmod(temporary, 0o666 & ~_current_umask())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path

