"""Attacks: the native training-time inner maximisation (:mod:`kdbench.attacks.pgd`)."""
