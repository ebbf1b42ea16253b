"""The data layer of the embedded default experiment: real pretrained weights and real data sets
that ship inside pinned packages (:mod:`lines.data.assets`), their loaders
(:mod:`lines.data.text`, :mod:`lines.data.vision`) and the task registry with the split protocol
(:mod:`lines.data.registry`)."""

from lines.data.assets import ASSETS, Asset, locate
from lines.data.registry import (
    SUITES,
    TASKS,
    LoadedTask,
    Task,
    get_task,
    load_task,
    make_splits,
    register,
    suite_tasks,
)

__all__ = [
    "ASSETS",
    "SUITES",
    "TASKS",
    "Asset",
    "LoadedTask",
    "Task",
    "get_task",
    "load_task",
    "locate",
    "make_splits",
    "register",
    "suite_tasks",
]
