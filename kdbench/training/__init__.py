"""The one training engine (:func:`kdbench.training.engine.train`)."""
from .engine import train  # noqa: F401
