"""Tasks: the contract (:class:`Task`, :class:`Metrics`) and the task plugins shipped with
rsvision (``cls``, ``seg``, ``det``), installed as ``rsvision.tasks``."""

from rsvision.tasks import classification, detection, segmentation  # noqa: F401  (registers the tasks)
from rsvision.tasks.base import Metrics, Task

__all__ = ["Metrics", "Task"]
