"""Files kdbench writes: atomically, inside the directory they belong to, with stale temp files
from a killed run cleaned up (docs/guarantees.md).

* :func:`atomic_write` writes ``.NAME.tmp<pid>`` beside the target, fsyncs it and renames it
  over the target: a kill or a full disk leaves the old file or the new one, never half of one.
* :func:`clean_stale` removes the temp files of processes that no longer run (a kill -9 leaves
  them); :func:`atomic_write` calls it for the target's directory, so the next write cleans up.
* :func:`safe_component` / :func:`confined` keep paths built from data (row names, chain roles)
  inside the output directory: no ``..``, no absolute path, no separator smuggled in a name.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable

from .errors import KdbenchError

_TMP = re.compile(r"^\.(?P<name>.+)\.tmp(?P<pid>\d+)$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._+=@-]")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    except OSError:
        return False
    return True


def clean_stale(directory) -> int:
    """Remove ``.NAME.tmp<pid>`` files in ``directory`` whose process is gone; returns how many."""
    d = Path(directory)
    removed = 0
    try:
        names = os.listdir(d)
    except OSError:
        return 0
    for n in names:
        m = _TMP.match(n)
        if m and not _alive(int(m.group("pid"))):
            try:
                (d / n).unlink()
                removed += 1
            except OSError:
                pass
    return removed


def atomic_write(path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` then rename over ``path``: a kill leaves the old file or the new one."""
    path = Path(path)
    if path.is_dir():
        raise KdbenchError(f"{path}: is a directory, not a file")
    clean_stale(path.parent)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path, text: str) -> None:
    """``Path.write_text``, atomically."""
    atomic_write(path, lambda p: Path(p).write_text(text))


def safe_component(name: str, what: str = "name") -> str:
    """One path component made from data: characters outside ``[A-Za-z0-9._+=@-]`` become ``_``
    and a name of only dots (``.``, ``..``) is refused."""
    s = _UNSAFE.sub("_", str(name))
    if not s or set(s) == {"."}:
        raise KdbenchError(f"{what} {name!r} cannot name a file")
    return s


def confined(root, *parts: str, what: str = "name") -> Path:
    """``root/part/...`` with every part made safe (:func:`safe_component`), checked to stay inside ``root``."""
    root = Path(root)
    out = root.joinpath(*(safe_component(p, what) for p in parts))
    if os.path.commonpath([os.path.abspath(root), os.path.abspath(out)]) != os.path.abspath(root):
        raise KdbenchError(f"{what} {'/'.join(parts)!r} leaves the output directory {root}")
    return out


def check_writable_file(path, what: str = "--out") -> Path:
    """Refuse, before any work, an output file that cannot be written: a directory, a missing or
    read-only parent directory."""
    p = Path(path)
    if p.is_dir():
        raise KdbenchError(f"{what} {p}: is a directory, not a file")
    parent = p.parent
    if not parent.is_dir():
        raise KdbenchError(f"{what} directory does not exist: {parent}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise KdbenchError(f"{what} {p}: directory {parent} is not writable")
    if p.exists() and not os.access(p, os.W_OK):
        raise KdbenchError(f"{what} {p}: file is read-only")
    return p
