"""Content, style and total-variation losses, one value per batch item.

Every loss here reduces over all but the batch dimension, so that the sum over
a batch has the same gradient for each item as that item's loss alone. That is
what lets several pairs be optimised together in one tensor.
"""

from __future__ import annotations

import torch

__all__ = ["gram_matrix", "content_loss", "style_loss", "total_variation"]


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """Compute the Gram matrix of feature maps, normalised by their size.

    .. math:: G_{ij} = \\frac{1}{C H W} \\sum_{k} F_{ik} F_{jk}

    Args:
        features: Feature maps of shape (B, C, H, W).

    Returns:
        Gram matrices of shape (B, C, C).
    """
    if features.dim() != 4:
        raise ValueError(f"Expected features of shape (B, C, H, W). Got {tuple(features.shape)}")
    batch, channels, height, width = features.shape
    size = channels * height * width
    if not features.is_contiguous() and features.is_contiguous(memory_format=torch.channels_last):
        # Reading channels-last maps as (B, H*W, C) is free, while the
        # (B, C, H*W) view would copy them.
        flat = features.permute(0, 2, 3, 1).reshape(batch, height * width, channels)
        return torch.bmm(flat.transpose(1, 2), flat) / size
    flat = features.reshape(batch, channels, height * width)
    return torch.bmm(flat, flat.transpose(1, 2)) / size


def content_loss(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error between feature maps, per batch item.

    Args:
        features: Features of the image being optimised, shape (B, C, H, W).
        target: Features of the content image, the same shape.

    Returns:
        Losses of shape (B,).
    """
    return (features - target).square().flatten(1).mean(dim=1)


def style_loss(gram: torch.Tensor, target_gram: torch.Tensor) -> torch.Tensor:
    """Mean squared error between Gram matrices, per batch item.

    Args:
        gram: Gram matrices of the image being optimised, shape (B, C, C).
        target_gram: Gram matrices of the style image, shape (B, C, C) or
            (1, C, C) to share one style across the batch.

    Returns:
        Losses of shape (B,).
    """
    return (gram - target_gram).square().flatten(1).mean(dim=1)


def total_variation(image: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between neighbouring pixels, per batch item.

    Args:
        image: Images of shape (B, C, H, W).

    Returns:
        Losses of shape (B,): the mean of the horizontal plus the mean of the
        vertical absolute differences.
    """
    if image.dim() != 4:
        raise ValueError(f"Expected images of shape (B, C, H, W). Got {tuple(image.shape)}")
    vertical = (image[:, :, 1:, :] - image[:, :, :-1, :]).abs().flatten(1).mean(dim=1)
    horizontal = (image[:, :, :, 1:] - image[:, :, :, :-1]).abs().flatten(1).mean(dim=1)
    return vertical + horizontal
