"""Attacks: the registry (:mod:`.registry`), the built-in families registered through it
(:mod:`.gradient`, :mod:`.apgd`, :mod:`.minimal`, :mod:`.fast`), suites (:mod:`.suites`), and kdbench's own
implementations -- the training-time PGD and CW-inf (:mod:`.pgd`) and the batched Carlini-Wagner
attacks (:mod:`.cw`).  Library calls live in :mod:`kdbench.adapters`."""
# the built-in families register their entries on import; this order is the registry's order
# (validity's pairs, the leaderboard's columns)
from . import gradient, apgd, minimal, fast  # noqa: E402,F401,I001
