"""Progress of long phases (attacks, checks, probes, training epochs), one reporter for all.

``mode`` (``kdbench.evaluate(progress=...)``, ``kdbench train``):

* ``"bar"``   -- rich progress bars on stderr;
* ``"lines"`` -- one plain line per phase start and end, and one at most every
  ``KDBENCH_PROGRESS_SECONDS`` (default 10) while it runs: for logs and CI, where a bar is noise;
* ``"log"``   -- the same lines as ``logging`` records (INFO, logger ``kdbench``): the Python
  API's default, silent unless the caller configures logging;
* ``"off"``.

``True`` means ``"bar"`` when stderr is a terminal and ``"lines"`` otherwise (the CLI's
default); ``False`` means ``"off"``.  A phase counts its unit (points, batches) and can carry a
live note -- the model passes an attack has made so far, updated on every forward pass, so
library attacks that take a whole chunk at once still show movement.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from typing import Optional, Union

log = logging.getLogger("kdbench")

MODES = ("bar", "lines", "log", "off")


def resolve_mode(progress: Union[bool, str, None]) -> str:
    if progress is None or progress is False:
        return "off"
    if progress is True:
        return "bar" if sys.stderr.isatty() else "lines"
    if progress not in MODES:
        from .errors import KdbenchError

        raise KdbenchError(f"progress must be one of {', '.join(MODES)}, True or False; got {progress!r}")
    return progress


class Phase:
    """One phase: ``advance(n)`` units done, ``note(text)`` a live remark (throttled)."""

    def __init__(self, reporter: "Reporter", name: str, total: Optional[int], unit: str):
        self.r, self.name, self.total, self.unit = reporter, name, total, unit
        self.done, self.text = 0, ""
        self.t0 = self.last = time.monotonic()
        self.task = None
        if reporter.bar is not None:
            self.task = reporter.bar.add_task(name, total=total, note="")
        else:
            self._emit("started")

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self.task is not None:
            self.r.bar.update(self.task, advance=n, note=self.text)
        else:
            self._tick()

    def note(self, text: str) -> None:
        self.text = text
        if self.task is not None:
            now = time.monotonic()
            if now - self.last >= 0.1:  # rich redraws at 10 Hz anyway
                self.last = now
                self.r.bar.update(self.task, note=text)
        else:
            self._tick()

    def _tick(self) -> None:
        now = time.monotonic()
        if now - self.last >= self.r.interval:
            self.last = now
            self._emit("")

    def _emit(self, what: str) -> None:
        if self.r.mode not in ("lines", "log"):
            return
        of = f"/{self.total}" if self.total is not None else ""
        msg = f"{self.name}: {what + ' ' if what else ''}{self.done}{of} {self.unit}"
        msg += f", {self.text}" if self.text else ""
        msg += f" ({time.monotonic() - self.t0:.1f} s)"
        self.r.emit(msg)

    def close(self) -> None:
        if self.task is not None:
            self.r.bar.remove_task(self.task)
        else:
            self._emit("done,")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Reporter:
    """Phases of one command, shown as ``mode`` says (module docstring).  Use as a context
    manager around the phases; ``print`` writes a line above the bars (or as a line)."""

    def __init__(self, progress: Union[bool, str, None] = True, transient: bool = True):
        self.mode = resolve_mode(progress)
        self.interval = float(os.environ.get("KDBENCH_PROGRESS_SECONDS", "10"))
        self.bar = None
        if self.mode == "bar":
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[note]}"), TimeElapsedColumn(), TextColumn("ETA"),
                                TimeRemainingColumn(), console=Console(stderr=True), transient=transient)

    def phase(self, name: str, total: Optional[int] = None, unit: str = "points") -> Phase:
        return Phase(self, name, total, unit)

    def emit(self, msg: str) -> None:
        if self.mode == "lines":
            print(f"[kdbench] {msg}", file=sys.stderr, flush=True)
        elif self.mode == "log":
            log.info(msg)

    def print(self, msg: str) -> None:
        if self.bar is not None:
            self.bar.console.print(msg)
        else:
            self.emit(msg)

    def __enter__(self):
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)
