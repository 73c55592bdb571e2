"""A tiny name -> factory registry, shared by datasets, models, methods and attacks.

Usage (the way timm registers models)::

    MODELS = Registry("model")

    @MODELS.register("smallcnn")
    def smallcnn(num_classes, in_channels, input_size): ...

    MODELS.get("smallcnn")  # -> the factory, or a KdbenchError listing the known names
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Callable, Dict, Iterator, TypeVar

from .errors import KdbenchError

T = TypeVar("T")


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._items: Dict[str, Callable] = {}

    def register(self, name: str, *aliases: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            for key in (name, *aliases):
                key = key.lower()
                if key in self._items:
                    raise ValueError(f"{self.kind} {key!r} registered twice")
                self._items[key] = obj
            return obj

        return deco

    def find(self, name: str):
        """The object registered under ``name``, or None."""
        return self._items.get(name.lower())

    def get(self, name: str):
        try:
            return self._items[name.lower()]
        except KeyError:
            known = ", ".join(sorted(self._items))
            raise KdbenchError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def __contains__(self, name: str) -> bool:
        return name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def names(self) -> list:
        return sorted(self._items)

    def values(self) -> list:
        """The registered objects in registration order, each once (aliases folded)."""
        seen, out = set(), []
        for v in self._items.values():
            if id(v) not in seen:
                seen.add(id(v))
                out.append(v)
        return out


def import_submodules(package: str, path, skip=()) -> None:
    """Import every module of a package (``__name__``, ``__path__``), so that each file's
    ``@REGISTRY.register`` runs: adding an entry is adding a file, with no list to edit."""
    for m in pkgutil.iter_modules(path):
        if m.name not in skip:
            importlib.import_module(f"{package}.{m.name}")
