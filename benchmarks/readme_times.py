"""Measured CPU and wall seconds of the commands README.md shows (issue 21, item 1), at full size,
in order, in a scratch directory (so later commands find the runs earlier ones trained).

Each ``bash`` block of README.md is split into commands as tests/test_docs.py does; install lines
are what the set-up did and are not re-run; the test command is timed only with ``--tests``.
Commands needing files this machine lacks (CIFAR-10 on disk, RobustBench checkpoints) are listed
as not run, with the reason.  CPU seconds are the children's user + system time (2 threads of
torch count twice per wall second), so run it on an otherwise idle machine.

    python benchmarks/readme_times.py [--only REGEX] [--tests] > times.md
"""
from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from test_docs import blocks, commands  # noqa: E402  (the docs test's block parser: one reading of README)
BIN = Path(sys.executable).parent
NEEDS = [(re.compile(r"cifar10|robustbench:"), "needs CIFAR-10 / RobustBench files on disk"),
         (re.compile(r"my_models\.py|npz:my_data"), "needs the reader's own model and data files")]


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", help="run only the commands matching this regex (later commands may need the "
                                   "runs earlier ones train)")
    ap.add_argument("--tests", action="store_true", help="also time the test command (about 10 minutes)")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kdbench-readme-"))
    for name in ("configs", "leaderboards", "scripts", "recipes"):
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
        why = next((w for rx, w in NEEDS if rx.search(run)), None)
        if "python -m pytest" in run and not a.tests:
            why = "the test suite: --tests"
        if a.only and not re.search(a.only, cmd):
            why = why or "not selected (--only)"
        if why:
            print(f"| `{shown}` | – | – | not run: {why} |", flush=True)
            continue
        c0, t0 = children_cpu(), time.time()
        rc = subprocess.run(["bash", "-c", run], cwd=work if "pytest" not in run else ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
        print(f"| `{shown}` | {children_cpu() - c0:.0f} | {time.time() - t0:.0f} | {rc} |", flush=True)


if __name__ == "__main__":
    main()
