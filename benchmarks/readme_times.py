"""Measured CPU and wall seconds of the commands README.md shows (issue 21, item 1), at full size,
in order, in a scratch directory (so later commands find the runs earlier ones trained).

Each ``bash`` block of README.md is split into commands as tests/test_docs.py does; install lines
are what the set-up did and are not re-run; the test command is timed only with ``--tests``.
Commands needing files that are not there (CIFAR-10 under ``$KDBENCH_DATA_DIR``, the robustbench
package, the reader's own files placed in the ``--work`` directory) are listed as not run, with the
reason; where they are there, they are timed like the others.  CPU seconds are the children's
user + system time (2 threads of torch count twice per wall second), so run it on an otherwise
idle machine.

``--stand-ins`` times the commands whose files this machine lacks on stand-ins in the same formats,
written into the scratch directory (overwriting): CIFAR-10's binary files at full size (50 000 +
10 000 images of random pixels, every label 0), RobustBench checkpoints and ``w.safetensors`` of
the commands' own architectures with random weights, ``my_models.py`` (a ResNet-18) and
``my_data.npz`` (1 000 CIFAR-shaped test points; ten training points, one per class, give it 10
classes).  A training step costs the same on any pixels.  Each stand-in model's class-0 logit is
raised by ``RAISE``, so every point is classified correctly with a margin no attack overturns and
every attack spends its whole budget on every point: a stand-in evaluation's time is an upper
bound for a real model (marked ``<=``), where attacks stop on the points they break.  Such an
evaluation is estimated like a long training: it runs on ``EVAL_SIZES`` points and extends the
straight line through the two timings to the command's points.

A ``kdbench train`` command on more than ``LONG`` training images (no ``--train-subset``: hours
here) is *estimated*, marked ``~``: it runs for one epoch on ``SIZES[0]`` and on ``SIZES[1]``
images (the second into the command's own ``--out``, so later commands find the run), and the
full run is ``E * (a + b * S)`` for ``t(N) = a + b * N`` through the two timings (``a``: start-up
and the epoch's monitor evaluation, ``b``: seconds per training image), ``S`` the training set's
images and ``E`` the epochs the command trains (``--epochs`` or the dataset's default).  It counts
the start-up ``E`` times, so it errs high by a few seconds per epoch.

    python benchmarks/readme_times.py [--only REGEX] [--tests] [--stand-ins] > times.md
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

import yaml

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
RAISE, EVAL_SIZES = 5.0, (4, 12)
MY_MODELS = '''"""benchmarks/readme_times.py's stand-in for the reader's model: a ResNet-18 whose class-0 logit is
raised by {r} (every point robust: an upper bound on the attacks' time)."""
import torch

from kdbench.models import build_model


def build(num_classes=10, in_channels=3, input_size=32):
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes, in_channels, input_size)
    with torch.no_grad():
        model.linear.bias[0] += {r}
    return model
'''


def _raise_class0(model):
    """The last linear layer's class-0 bias raised by ``RAISE`` (module docstring)."""
    import torch

    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.bias[0] += RAISE
    return model


def make_stand_ins(work: Path) -> dict:
    """Writes the stand-ins (``--stand-ins``, module docstring) into ``work``; returns the environment
    variables that point kdbench at them."""
    import numpy as np
    import torch

    from kdbench.adapters.compat import prepare_robustbench
    from kdbench.models import build_model
    from kdbench.weights import save_weights

    rng = np.random.RandomState(0)
    root = work / "stand-ins"
    c10 = root / "cifar-10-batches-bin"  # label byte + 3 072 pixel bytes per image
    c10.mkdir(parents=True, exist_ok=True)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        rec = np.zeros((10_000, 3073), np.uint8)
        rec[:, 1:] = rng.randint(0, 256, (10_000, 3072))
        (c10 / name).write_bytes(rec.tobytes())
    torch.manual_seed(0)
    save_weights(_raise_class0(build_model("resnet18", 10, 3, 32)), work / "w.safetensors")
    (work / "my_models.py").write_text(MY_MODELS.format(r=RAISE))
    np.savez(work / "my_data.npz", x_test=rng.rand(1000, 3, 32, 32).astype(np.float32), y_test=np.zeros(1000, np.int64),
             x_train=rng.rand(10, 3, 32, 32).astype(np.float32), y_train=np.arange(10))  # 10 classes
    prepare_robustbench()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    zoo = model_dicts[BenchmarkDataset("cifar10")][ThreatModel("Linf")]
    rb = root / "robustbench" / "cifar10" / "Linf"
    rb.mkdir(parents=True, exist_ok=True)
    for name in ("Wong2020Fast", "Zhang2019Theoretically"):  # README, configs/rslad/cifar10.yaml
        torch.save({"state_dict": _raise_class0(zoo[name]["model"]()).state_dict()}, rb / f"{name}.pt")
    return {"KDBENCH_DATA_DIR": str(root), "KDBENCH_ROBUSTBENCH_DIR": str(root / "robustbench")}


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed(run: str, cwd: Path, env: dict):
    """(CPU s, wall s, exit status) of one shell command."""
    c0, t0 = children_cpu(), time.time()
    rc = subprocess.run(["bash", "-c", run], cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL).returncode
    return children_cpu() - c0, time.time() - t0, rc


def full_size(run: str, cwd: Path):
    """(training images S, epochs E) of a ``kdbench train`` command that trains on more than ``LONG``
    images, else None."""
    args = shlex.split(run)
    if "train" not in args[:3] or any(a in args for a in ("--train-subset", "--resume", "--chain")):
        return None
    opt = dict(zip(args, args[1:]))
    from kdbench.data import get_dataset

    cfg = yaml.safe_load((cwd / opt["--config"]).read_text()) if "--config" in opt else {}
    if cfg.get("train_subset"):
        return None
    ds = get_dataset(opt.get("--dataset", cfg.get("dataset", "")))
    size = len(ds.train.y)
    epochs = opt.get("--epochs", cfg.get("epochs", ds.info.train_defaults["epochs"]))
    return (size, int(epochs)) if size > LONG else None


def estimate_eval(run: str, cwd: Path, env: dict, sizes=EVAL_SIZES):
    """A stand-in evaluation's (CPU s, wall s, exit status, the measured timings, the command's points):
    run on each of ``sizes`` points, extended along the straight line through the two timings to the
    command's points (``--n``, else the test set).  With one size the time is scaled in proportion,
    start-up included: higher still."""
    args = shlex.split(run)
    opt = dict(zip(args, args[1:]))
    if "--n" in opt:
        points = int(opt["--n"])
    else:
        from kdbench.data import get_dataset

        spec = opt["--dataset"]
        spec = f"npz:{cwd / spec[4:]}" if spec.startswith("npz:") else spec
        points = len(get_dataset(spec).test.y)
    timings = []
    for n in sizes:
        cmd = re.sub(r"--n \d+", f"--n {n}", run) if "--n" in opt else f"{run} --n {n}"
        cpu, wall, rc = timed(cmd, cwd, env)
        if rc:
            return None, None, rc, timings, points
        timings.append((n, cpu, wall))
    if len(timings) == 1:
        (n1, c1, w1), = timings
        return c1 * points / n1, w1 * points / n1, 0, timings, points
    (n1, c1, w1), (n2, c2, w2) = timings
    full = [t1 + (t2 - t1) / (n2 - n1) * (points - n1) for t1, t2 in ((c1, c2), (w1, w2))]
    return full[0], full[1], 0, timings, points


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


def estimated_row(shown: str, rc: int, how: str, mark: str, cpu, wall, what: str) -> str:
    """The table row of an estimated command: its figures and how they were reached, or its exit status."""
    if rc:
        return f"| `{shown}` | – | – | {rc} ({how or 'the first size failed'}) |"
    return f"| `{shown}` | {mark}{cpu:,.0f} | {mark}{wall:,.0f} | 0 ({what} from {how}) |"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", help="run only the commands matching this regex (later commands may need the "
                                   "runs earlier ones train)")
    ap.add_argument("--tests", action="store_true", help="also time the test command (about 10 minutes)")
    ap.add_argument("--work", help="the scratch directory of an earlier run, to reuse its runs (with --only)")
    ap.add_argument("--stand-ins", action="store_true",
                    help="time the CIFAR-10, RobustBench and own-files commands on stand-ins in the same formats "
                         "(module docstring; evaluations: an upper bound)")
    ap.add_argument("--eval-sizes", default=",".join(map(str, EVAL_SIZES)),
                    help="the points a stand-in evaluation runs on: two sizes (a straight line) or one (scaled "
                         "in proportion)")
    a = ap.parse_args()
    work = Path(a.work).resolve() if a.work else Path(tempfile.mkdtemp(prefix="kdbench-readme-"))
    for name in ("configs", "leaderboards", "scripts", "recipes"):
        if not (work / name).exists():
            (work / name).symlink_to(ROOT / name)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("KDBENCH_SMOKE", None)
    if a.stand_ins:
        made = make_stand_ins(work)
        env.update(made)
        os.environ.update(made)  # this process reads the stand-in CIFAR-10 too (NEEDS, test-set sizes)
        _cifar10.cache_clear()
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
        stand_in = a.stand_ins and any(rx.search(run) for rx, _, _ in NEEDS)
        if stand_in and shlex.split(bare)[1:2] == ["evaluate"]:
            cpu, wall, rc, timings, points = estimate_eval(bare, work, env, [int(v) for v in a.eval_sizes.split(",")])
            how = "; ".join(f"{n} points: {c:.0f} CPU s, {w:.0f} s wall" for n, c, w in timings)
            print(estimated_row(shown, rc, how, "<= ~", cpu, wall,
                                f"stand-ins, every point robust: estimated for {points:,} points"), flush=True)
            continue
        long = full_size(bare, work)
        if long:
            cpu, wall, rc, points = estimate(bare, *long, work, env)
            how = "; ".join(f"1 epoch on {n} images: {c:.0f} CPU s, {w:.0f} s wall" for n, c, w in points)
            print(estimated_row(shown, rc, how, "~", cpu, wall, f"{'stand-ins: ' if stand_in else ''}estimated "
                                f"for {long[1]} epochs on {long[0]:,} images"), flush=True)
            continue
        cpu, wall, rc = timed(run, work if "pytest" not in run else ROOT, env)
        print(f"| `{shown}` | {cpu:.0f} | {wall:.0f} | {rc} |", flush=True)


if __name__ == "__main__":
    main()
