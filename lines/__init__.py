"""LiNeS: post-training layer scaling of task vectors, and the model-merging methods around it.

Wang et al., "LiNeS: Post-training Layer Scaling Prevents Forgetting and Enhances Model Merging",
ICLR 2025 (arXiv 2410.17146). This package is the pure library: no orchestration, no tracking.
"""

from lines._torchvision_compat import ensure_torchvision_importable

__version__ = "0.1.0"

# transformers and open_clip import torchvision; with a CPU torch and the registry's CUDA
# torchvision that import fails unless the two missing op schemas exist (no-op elsewhere).
ensure_torchvision_importable()
