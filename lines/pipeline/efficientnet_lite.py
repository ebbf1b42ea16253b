"""EfficientNet-Lite0 (Tan & Le 2019; the Lite variants drop squeeze-and-excitation and swish for
mobile) from the pinned ``efficientnet-lite-pytorch`` package, whose model code imports only torch."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from lines.errors import LinesError
from lines.io import load_state_dict


def build_efficientnet_lite0(
    weights: Path, image_size: int = 224
) -> tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor], int]:
    """(network with the package's key names, feature extractor, feature width)."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise LinesError(
            "efficientnet-lite-pytorch==0.1.0 is not installed; install it with "
            "`pip install --no-deps efficientnet-lite-pytorch==0.1.0` (or scripts/install_assets.sh)"
        ) from None
    # Static "same" padding is computed for the input size, so build for the size we feed.
    net = EfficientNet.from_name("efficientnet-lite0", image_size=image_size)
    net.load_state_dict(load_state_dict(weights))
    return net, net.extract_features, int(net._fc.in_features)
