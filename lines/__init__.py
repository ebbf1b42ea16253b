"""LiNeS: post-training layer scaling of task vectors, and the model-merging methods around it.

Wang et al., "LiNeS: Post-training Layer Scaling Prevents Forgetting and Enhances Model Merging",
ICLR 2025 (arXiv 2410.17146). This package is the pure library: no orchestration, no tracking.
"""

__version__ = "0.1.0"
