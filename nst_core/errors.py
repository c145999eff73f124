"""The project's exceptions.

Bad argument values raise the built-in ``ValueError`` or ``TypeError``. The
classes here cover what goes wrong with files, weights and the optimisation
itself, so that callers such as a batch runner can tell a pair that will never
work (an unreadable image) from one worth retrying (out of memory).
"""

from __future__ import annotations

__all__ = [
    "NSTError",
    "ImageError",
    "ImageTooSmallError",
    "WeightsError",
    "NonFiniteLossError",
]


class NSTError(Exception):
    """Base class of every error raised by ``nst_core``."""


class ImageError(NSTError):
    """An image file is missing, unreadable or unusable.

    Attributes:
        path: The file that failed, or ``None`` for an in-memory image.
        reason: What is wrong with it, without the path.
    """

    def __init__(self, path: object, reason: str) -> None:
        self.path = path
        self.reason = reason
        where = f"image '{path}'" if path is not None else "image"
        super().__init__(f"Cannot use {where}: {reason}")

    def __reduce__(self):
        return type(self), (self.path, self.reason)


class ImageTooSmallError(ImageError):
    """An image would be smaller than the minimum side length after resizing."""


class WeightsError(NSTError):
    """Model weights cannot be downloaded, read or loaded."""


class NonFiniteLossError(NSTError):
    """The loss became NaN or infinite during optimisation.

    Attributes:
        step: The zero-based step at which the loss was first non-finite.
    """

    def __init__(self, step: int, message: str) -> None:
        self.step = step
        super().__init__(message)

    def __reduce__(self):
        return type(self), (self.step, self.args[0])
