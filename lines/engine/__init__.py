"""The streaming engine: task vectors, merge methods and LiNeS, one tensor at a time.

- ``stream``: θ_0 and the fine-tuned checkpoints read tensor by tensor as task vectors (slices for
  element-wise methods), the methods' statistics passes, the device parser.
- ``writers``: θ written in one pass, τ_MTL streamed to a file with its norms, a saved τ applied.
- ``manifest``: what every output records, and the recipe in its output id.
- ``merge``: the entry points below.
"""

from lines.engine.merge import (
    apply_task_vector,
    build_task_vector,
    edit_checkpoint,
    merge_checkpoints,
)
from lines.engine.stream import (
    DTYPE_NAMES,
    GPU_WORKING_SET_BYTES,
    WORKING_SET_BYTES,
    TaskVectorStream,
    check_compatible,
    is_elementwise,
    resolve_device,
)
from lines.engine.writers import MergeReport, task_vector_norms

__all__ = [
    "DTYPE_NAMES",
    "GPU_WORKING_SET_BYTES",
    "WORKING_SET_BYTES",
    "MergeReport",
    "TaskVectorStream",
    "apply_task_vector",
    "build_task_vector",
    "check_compatible",
    "edit_checkpoint",
    "is_elementwise",
    "merge_checkpoints",
    "resolve_device",
    "task_vector_norms",
]
