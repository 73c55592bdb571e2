"""Training methods (a registry).  A method is a small class with two hooks over the one
training loop (:mod:`kdbench.training.engine`):

* :meth:`Method.perturb` -- the inner maximisation: how x' is made (or None for none);
* :meth:`Method.loss` -- the outer loss, given the student, x, x' and y.

Teachers are frozen, in eval mode, and handed to the method at construction.

Adding a method: one file in this folder whose class is decorated with
``@METHODS.register("name")``; every module here is imported on first use (no list to edit).
"""
from __future__ import annotations

from ..registry import import_submodules
from .base import METHODS, InnerMaxConfig, Method, get_method  # noqa: F401

import_submodules(__name__, __path__, skip=("base",))
