"""Measured CPU and wall seconds of the commands README.md shows (issue 21, item 1), at full size,
in order, in a scratch directory (so later commands find the runs earlier ones trained).

Each ``bash`` block of README.md is split into commands as tests/test_docs.py does; install lines
are what the set-up did and are not re-run; the test command is timed only with ``--tests``.
Commands needing files that are not there (CIFAR-10 under ``$KDBENCH_DATA_DIR``, the robustbench
package, the reader's own files placed in the ``--work`` directory) are listed as not run, with the
reason; where they are there, they are timed like the others.  CPU seconds are the children's
user + system time (2 threads of torch count twice per wall second), so run it on an otherwise
idle machine.

A ``kdbench train`` command on more than ``LONG`` training images (no ``--train-subset``: hours
here) is *estimated*, marked ``~``: it runs for one epoch on ``SIZES[0]`` and on ``SIZES[1]``
images (the second into the command's own ``--out``, so later commands find the run), and the
full run is ``E * (a + b * S)`` for ``t(N) = a + b * N`` through the two timings (``a``: start-up
and the epoch's monitor evaluation, ``b``: seconds per training image), ``S`` the training set's
images and ``E`` the epochs the command trains (``--epochs`` or the dataset's default).  It counts
the start-up ``E`` times, so it errs high by a few seconds per epoch.

    python benchmarks/readme_times.py [--only REGEX] [--tests] > times.md
"""
from __future__ import annotations

import argparse
import functools
import importlib.util
import os
import re
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from test_docs import blocks, commands  # noqa: E402  (the docs test's block parser: one reading of README)
BIN = Path(sys.executable).parent


@functools.lru_cache(maxsize=None)
def _cifar10() -> bool:
    """CIFAR-10 is on disk (``$KDBENCH_DATA_DIR``)."""
    from kdbench.data import get_dataset

    try:
        get_dataset("cifar10")
        return True
    except Exception:
        return False


def _files(*names):
    return lambda work: all((work / n).exists() for n in names)


# (pattern, what the command needs, whether it is there: a function of the scratch directory)
NEEDS = [(re.compile(r"robustbench:"), "needs CIFAR-10 and the robustbench package (its checkpoint downloads)",
          lambda work: _cifar10() and importlib.util.find_spec("robustbench") is not None),
         (re.compile(r"--weights w\.safetensors"), "needs CIFAR-10 and the reader's weights (w.safetensors)",
          lambda work: _cifar10() and (work / "w.safetensors").exists()),
         (re.compile(r"cifar10"), "needs CIFAR-10 on disk ($KDBENCH_DATA_DIR)", lambda work: _cifar10()),
         (re.compile(r"my_models\.py|npz:my_data"), "needs the reader's own model and data files",
          _files("my_models.py", "my_data.npz"))]
LONG, SIZES = 20_000, (500, 2500)


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed(run: str, cwd: Path, env: dict):
    """(CPU s, wall s, exit status) of one shell command."""
    c0, t0 = children_cpu(), time.time()
    rc = subprocess.run(["bash", "-c", run], cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL).returncode
    return children_cpu() - c0, time.time() - t0, rc


def full_size(run: str):
    """(training images S, epochs E) of a ``kdbench train`` command that trains on more than ``LONG``
    images, else None."""
    args = shlex.split(run)
    if "train" not in args[:3] or any(a in args for a in ("--train-subset", "--config", "--resume", "--chain")):
        return None
    opt = dict(zip(args, args[1:]))
    from kdbench.data import get_dataset

    ds = get_dataset(opt.get("--dataset", ""))
    size = len(ds.train.y)
    return (size, int(opt.get("--epochs", ds.info.train_defaults["epochs"]))) if size > LONG else None


def estimate(run: str, size: int, epochs: int, cwd: Path, env: dict):
    """The full command's (CPU s, wall s, exit status, the two measured timings) from one epoch on
    each of ``SIZES`` (module docstring)."""
    args = shlex.split(run)
    out = args[args.index("--out") + 1]
    points = []
    for n in SIZES:
        target = out if n == SIZES[-1] else f"{out}-est{n}"
        shutil.rmtree(cwd / target, ignore_errors=True)  # a run left in the scratch directory by --work
        cmd = run.replace(f"--out {out}", f"--out {target}") + f" --epochs 1 --train-subset {n}"
        cpu, wall, rc = timed(cmd, cwd, env)
        if rc:
            return None, None, rc, points
        points.append((n, cpu, wall))
    (n1, c1, w1), (n2, c2, w2) = points
    full = [epochs * (t1 + (t2 - t1) / (n2 - n1) * (size - n1)) for t1, t2 in ((c1, c2), (w1, w2))]
    return full[0], full[1], 0, points


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", help="run only the commands matching this regex (later commands may need the "
                                   "runs earlier ones train)")
    ap.add_argument("--tests", action="store_true", help="also time the test command (about 10 minutes)")
    ap.add_argument("--work", help="the scratch directory of an earlier run, to reuse its runs (with --only)")
    a = ap.parse_args()
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="kdbench-readme-"))
    for name in ("configs", "leaderboards", "scripts", "recipes"):
        if not (work / name).exists():
            (work / name).symlink_to(ROOT / name)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("KDBENCH_SMOKE", None)
    print("| command | CPU s | wall s | exit |")
    print("|---|---|---|---|")
    for cmd in (c for lang, code in blocks(ROOT / "README.md") if lang == "bash" for c in commands(code)):
        run = re.sub(r"^bash scripts/install\.sh && ", "", cmd).replace(".venv/bin/", f"{BIN}/")
        if re.match(r"^(bash scripts/install\.sh\s*$|source |pip install)", run):
            continue
        shown = cmd.split("  #")[0].strip()
        why = next((w for rx, w, there in NEEDS if rx.search(run) and not there(work)), None)
        if "python -m pytest" in run and not a.tests:
            why = "the test suite: --tests"
        if a.only and not re.search(a.only, cmd):
            why = why or "not selected (--only)"
        if why:
            print(f"| `{shown}` | – | – | not run: {why} |", flush=True)
            continue
        bare = run.split("  #")[0].strip()  # without its comment
        long = full_size(bare)
        if long:
            cpu, wall, rc, points = estimate(bare, *long, work, env)
            how = "; ".join(f"1 epoch on {n} images: {c:.0f} CPU s, {w:.0f} s wall" for n, c, w in points)
            if rc:
                print(f"| `{shown}` | – | – | {rc} ({how or 'the first size failed'}) |", flush=True)
            else:
                print(f"| `{shown}` | ~{cpu:,.0f} | ~{wall:,.0f} | 0 (estimated for {long[1]} epochs on "
                      f"{long[0]:,} images from {how}) |", flush=True)
            continue
        cpu, wall, rc = timed(run, work if "pytest" not in run else ROOT, env)
        print(f"| `{shown}` | {cpu:.0f} | {wall:.0f} | {rc} |", flush=True)


if __name__ == "__main__":
    main()
