"""Task plugins shipped with rsvision (installed as ``rsvision.tasks``)."""

from rsvision.tasks import classification, segmentation  # noqa: F401
