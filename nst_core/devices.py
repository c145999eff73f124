"""Parsing and discovering the devices a transfer can run on."""

from __future__ import annotations

import re

import torch

__all__ = ["parse_device", "default_device", "available_devices"]

_DEVICE_PATTERN = re.compile(r"^(cpu|cuda)(?::(\d+))?$")


def parse_device(device: str | torch.device | None) -> torch.device:
    """Turn a device name into a ``torch.device`` that exists on this machine.

    Args:
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``, a ``torch.device``, or
            ``None`` for :func:`default_device`.

    Raises:
        ValueError: If the name is not one of the forms above, or names a CUDA
            device this machine does not have.
    """
    if device is None:
        return default_device()
    if isinstance(device, torch.device):
        text = str(device)
    elif isinstance(device, str):
        text = device.strip().lower()
    else:
        raise TypeError(f"device must be a string or torch.device. Got {type(device).__name__}")

    match = _DEVICE_PATTERN.match(text)
    if match is None:
        raise ValueError(f"Invalid device '{device}'. Use 'cpu', 'cuda' or 'cuda:N'")
    kind, index = match.group(1), match.group(2)
    if kind == "cpu":
        if index not in (None, "0"):
            raise ValueError(f"Invalid device '{device}'. Use 'cpu' without an index")
        return torch.device("cpu")

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise ValueError(f"Device '{device}' requested, but no CUDA GPU is available. Use 'cpu'")
    number = int(index) if index is not None else torch.cuda.current_device()
    if number >= count:
        visible = ", ".join(f"cuda:{i}" for i in range(count))
        raise ValueError(f"Device '{device}' does not exist. Visible GPUs: {visible}")
    return torch.device("cuda", number)


def default_device() -> torch.device:
    """Return the first CUDA GPU when there is one, else the CPU."""
    if torch.cuda.is_available() and torch.cuda.device_count() > 0:
        return torch.device("cuda", 0)
    return torch.device("cpu")


def available_devices() -> list[str]:
    """Return every visible CUDA GPU as ``"cuda:N"``, or ``["cpu"]`` when there is none."""
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        if count:
            return [f"cuda:{index}" for index in range(count)]
    return ["cpu"]
