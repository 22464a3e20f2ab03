"""Task plugins shipped with rsvision (installed as ``rsvision.tasks``)."""

from rsvision.tasks import classification  # noqa: F401
