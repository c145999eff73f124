"""The MobileNetV2 feature extractor that the losses compare.

Only the blocks up to the deepest one a loss reads are kept and parameters
never require gradients. By default BatchNorm layers are also folded into the
convolutions before them and activations use the channels-last memory format
that oneDNN and cuDNN run fastest. The result is the same function as
``mobilenet_v2().features`` in eval mode, up to float rounding, at a fraction
of its cost; ``exact=True`` keeps torchvision's blocks unmodified instead.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torchvision.models import mobilenet_v2

from .settings import NUM_FEATURE_BLOCKS
from .weights import DEFAULT_WEIGHTS, WeightsSpec, load_features_state_dict, weights_id

__all__ = ["FeatureExtractor", "load_feature_extractor", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class FeatureExtractor(nn.Module):
    """Outputs of chosen blocks of MobileNetV2's ``features``.

    Args:
        state_dict: State dict of ``mobilenet_v2().features``.
        depth: Index of the deepest block to keep, from 0 to 18.
        exact: Keep torchvision's blocks as they are, for outputs equal to
            ``mobilenet_v2().features`` to the last bit. The default folds each
            BatchNorm into the convolution before it, runs channels-last and
            uses out-of-place ReLU6, which is faster and equal up to float
            rounding. 1x1 convolutions then run as matrix products
            (`PointwiseConv2d`). Defaults to ``False``.
    """

    def __init__(
        self,
        state_dict: dict[str, torch.Tensor],
        depth: int,
        *,
        exact: bool = False,
    ) -> None:
        super().__init__()
        if not 0 <= depth < NUM_FEATURE_BLOCKS:
            raise ValueError(f"depth must be between 0 and {NUM_FEATURE_BLOCKS - 1}. Got {depth}")
        features = mobilenet_v2().features
        features.load_state_dict(state_dict)
        blocks = features[: depth + 1].eval()
        if not exact:
            blocks = _replace_pointwise_convolutions(_fold_batch_norm(blocks))
            # In-place ReLU6 on channels-last maps runs as a clamp followed by
            # a copy back, two passes over each activation instead of one.
            for module in blocks.modules():
                if isinstance(module, nn.ReLU6):
                    module.inplace = False
            blocks.to(memory_format=torch.channels_last)
        blocks.requires_grad_(False)
        self.blocks = blocks
        self.depth = depth
        self.channels_last = not exact
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.eval()

    def forward(self, image: torch.Tensor, layers: Sequence[int], *, normalize: bool = True) -> dict[int, torch.Tensor]:
        """Run the image through the blocks and collect the requested outputs.

        Args:
            image: RGB batch of shape (B, 3, H, W) with values in [0, 1].
            layers: Indices of the blocks whose outputs to return, each at
                most ``depth``.
            normalize: Subtract the ImageNet mean and divide by its standard
                deviation first. Defaults to ``True``.

        Returns:
            The output of each requested block, keyed by its index, each of
            shape (B, C, H', W').
        """
        wanted = set(layers)
        deepest = max(wanted)
        if deepest > self.depth:
            raise ValueError(f"Block {deepest} requested, but this extractor stops at block {self.depth}")
        x = (image - self.mean) / self.std if normalize else image
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        outputs = {}
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index in wanted:
                outputs[index] = x
            if index == deepest:
                break
        return outputs


def _fold_batch_norm(module: nn.Module) -> nn.Module:
    # torchvision builds every convolution of MobileNetV2 as a Conv2d directly
    # followed by a BatchNorm2d inside one Sequential, so folding each such
    # pair covers the whole network.
    for name, child in module.named_children():
        _fold_batch_norm(child)
    if isinstance(module, nn.Sequential):
        children = list(module)
        for index in range(len(children) - 1):
            conv, norm = children[index], children[index + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
                # Folding in float64 keeps the folded weights as close to the
                # original float32 computation as float32 storage allows.
                dtype = conv.weight.dtype
                folded = fuse_conv_bn_eval(conv.double(), norm.double()).to(dtype)
                module[index] = folded
                module[index + 1] = nn.Identity()
    return module


class PointwiseConv2d(nn.Module):
    """A 1x1 convolution computed as a matrix product over channels-last maps.

    On a channels-last (B, C, H, W) tensor, a 1x1 convolution with stride 1 is
    one (B*H*W, C_in) x (C_in, C_out) matrix product, which a GEMM computes
    without the layout copies that PyTorch's CPU convolution paths make.

    Args:
        conv: The 1x1 convolution, with stride 1, one group and a bias.
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.weight = nn.Parameter(conv.weight.detach().flatten(1).clone(), requires_grad=False)
        self.bias = nn.Parameter(conv.bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.permute(0, 2, 3, 1), self.weight, self.bias).permute(0, 3, 1, 2)


def _replace_pointwise_convolutions(module: nn.Module) -> nn.Module:
    for name, child in module.named_children():
        is_pointwise = (
            isinstance(child, nn.Conv2d)
            and child.kernel_size == (1, 1)
            and child.stride == (1, 1)
            and child.groups == 1
            and child.bias is not None
        )
        if is_pointwise:
            setattr(module, name, PointwiseConv2d(child))
        else:
            _replace_pointwise_convolutions(child)
    return module


_CACHE: dict[tuple[str, str, int, bool], FeatureExtractor] = {}
_CACHE_LOCK = threading.Lock()


def load_feature_extractor(
    weights: WeightsSpec = DEFAULT_WEIGHTS,
    device: torch.device | str = "cpu",
    depth: int = 7,
    *,
    exact: bool = False,
) -> FeatureExtractor:
    """Return the feature extractor for these weights, device and depth.

    Each combination is built once per process and reused, so a worker that
    runs many pairs loads its weights once.

    Args:
        weights: A weights specification, see :mod:`nst_core.weights`.
            Defaults to ``"IMAGENET1K_V1"``.
        device: Where the extractor runs. Defaults to the CPU.
        depth: Index of the deepest block needed. Defaults to 7.
        exact: Keep BatchNorm layers and contiguous memory, for results equal
            to torchvision's network to the last bit. Defaults to ``False``.
    """
    key = (weights_id(weights), str(torch.device(device)), depth, exact)
    with _CACHE_LOCK:
        extractor = _CACHE.get(key)
        if extractor is None:
            state_dict = load_features_state_dict(weights)
            extractor = FeatureExtractor(state_dict, depth, exact=exact).to(device)
            _CACHE[key] = extractor
        return extractor
