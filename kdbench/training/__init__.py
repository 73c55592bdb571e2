"""The one training engine (:func:`kdbench.train.engine.train`)."""
from .engine import train  # noqa: F401
