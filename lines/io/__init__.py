"""Checkpoint I/O: lazy readers for safetensors, torch state dicts and Hugging Face folders, an
atomic streaming safetensors writer, and the planning that keeps every output safe.

Readers never materialise a whole model: ``Checkpoint.get(key)`` reads one tensor.

- ``base``: ``TensorInfo``, the ``Checkpoint`` interface, sha256.
- ``safetensors_reader``, ``torch_reader``, ``readers`` (``open_checkpoint``): reading.
- ``writer``: ``SafetensorsWriter``, ``save_state_dict``, ``write_json_atomic``.
- ``outputs`` + ``output_rules`` + ``tempfiles``: where an output may go, staged publication,
  ``--overwrite``, locks and crash debris.
"""

from lines.io.base import (
    FOLDER_WEIGHT_FILES,
    MAX_HEADER,
    ST_DTYPES,
    ST_NAMES,
    Checkpoint,
    TensorInfo,
    sha256_file,
)
from lines.io.readers import (
    ShardedCheckpoint,
    iter_tensors,
    load_state_dict,
    open_checkpoint,
    weight_file_of_folder,
)
from lines.io.safetensors_reader import SafetensorsCheckpoint
from lines.io.torch_reader import TorchCheckpoint
from lines.io.writer import SafetensorsWriter, save_state_dict, write_json_atomic

__all__ = [
    "FOLDER_WEIGHT_FILES",
    "MAX_HEADER",
    "ST_DTYPES",
    "ST_NAMES",
    "Checkpoint",
    "SafetensorsCheckpoint",
    "SafetensorsWriter",
    "ShardedCheckpoint",
    "TensorInfo",
    "TorchCheckpoint",
    "iter_tensors",
    "load_state_dict",
    "open_checkpoint",
    "save_state_dict",
    "sha256_file",
    "weight_file_of_folder",
    "write_json_atomic",
]
