"""torchvision MobileNetV2 (Sandler et al. 2018): the ``features`` Sequential, one block per
entry: ``features.0`` (stem conv), ``features.1..17`` (inverted residuals), ``features.18``
(final 1×1 conv), so L = 19. Output side: ``classifier``. Nothing else sits outside the blocks.

The same layout fits torchvision's MobileNetV3 (L = 13 for small, 17 for large) and EfficientNet
(``features.0..8``, one block per stage). It does not fit VGG or AlexNet, whose ``features``
entries without parameters (ReLU, pooling) leave gaps in the indices, which raises.
"""

from lines.families.base import Family, Stack

FAMILY = Family(
    name="mobilenet-v2",
    description="torchvision MobileNetV2 / V3 (features.{i}; classifier on the output side)",
    stacks=(Stack("features", r"(?:^|\.)features\.(\d+)\."),),
    output_side=(r"(?:^|\.)classifier\.",),
    priority=80,
    aliases=("mobilenet", "mobilenet_v2", "mobilenetv2", "torchvision-features"),
)
