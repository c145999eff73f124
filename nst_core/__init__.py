"""Gatys-style neural style transfer on MobileNetV2 features.

The library behind the ``nst`` pipeline: decoding any image file, the feature
extractor, the losses and the optimisation loop. It imports no orchestration
code and prints nothing.
"""

from .devices import available_devices, default_device, parse_device
from .errors import ImageError, ImageTooSmallError, NonFiniteLossError, NSTError, WeightsError
from .features import FeatureExtractor, load_feature_extractor
from .images import decode_image, load_image, save_image, tensor_to_image
from .losses import content_loss, gram_matrix, style_loss, total_variation
from .settings import MAX_SIZE, MAX_STEPS, SettingsError, TransferSettings
from .transfer import LossHistory, Timings, TransferResult, transfer, transfer_batch
from .weights import DEFAULT_WEIGHTS, load_features_state_dict, weights_id

__all__ = [
    "DEFAULT_WEIGHTS",
    "MAX_SIZE",
    "MAX_STEPS",
    "FeatureExtractor",
    "ImageError",
    "ImageTooSmallError",
    "LossHistory",
    "NSTError",
    "NonFiniteLossError",
    "SettingsError",
    "Timings",
    "TransferResult",
    "TransferSettings",
    "WeightsError",
    "available_devices",
    "content_loss",
    "decode_image",
    "default_device",
    "gram_matrix",
    "load_feature_extractor",
    "load_features_state_dict",
    "load_image",
    "parse_device",
    "save_image",
    "style_loss",
    "tensor_to_image",
    "total_variation",
    "transfer",
    "transfer_batch",
    "weights_id",
]
