"""Docs that run (issue 21, item 6): every ``bash`` and ``python`` block of README.md and docs/*.md
is executed, in order, one working directory per document, with ``KDBENCH_SMOKE=1`` (kdbench/smoke.py:
every command capped to a few points, one epoch, 16 training images).

What a reader brings is provided as fixtures in the working directory (``my_models.py``,
``my_data.npz``, ``w.safetensors``, ``my_package/`` with ``ckpt.safetensors``, CIFAR-10 in
``data/`` in its binary on-disk format, RobustBench checkpoints under ``$KDBENCH_ROBUSTBENCH_DIR``),
with a copy of the repository's ``leaderboards/`` and links to ``configs/``, ``recipes/`` and
``scripts/``.  The rules, and nothing else, that turn a block into what runs:

* install lines (``bash scripts/install.sh``, ``source .venv/bin/activate``, ``pip install``) are
  what ``.ci/run`` did before the tests: not run again; ``bash scripts/install.sh && CMD`` runs
  CMD, and ``.venv/bin/`` is this interpreter's bin directory;
* the README's test command is this suite: it must be exactly ``.ci/run``'s last line;
* a command whose comment says ``exit 1`` (the CI gate) may exit 0 or 1; every other must exit 0;
* a python block whose first line is ``# NAME.py`` is a file the reader writes: it is written,
  then imported; any other python block runs as a script.
"""
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
INSTALL = re.compile(r"^(bash scripts/install\.sh\s*$|source \.venv/bin/activate\s*$|pip install\b)")


def blocks(path: Path):
    """(language, code) of every fenced block, in order."""
    return re.findall(r"^```(\w*)\n(.*?)^```", path.read_text(), re.S | re.M)


def commands(code: str):
    """A shell block's commands: continuation lines joined, blank and comment lines dropped."""
    out, cur = [], ""
    for line in code.splitlines():
        if line.rstrip().endswith("\\"):
            cur += line.rstrip()[:-1] + " "
            continue
        cur += line
        if cur.strip() and not cur.strip().startswith("#"):
            out.append(cur.strip())
        cur = ""
    return out


def ci_test_command() -> str:
    return [ln for ln in (ROOT / ".ci/run").read_text().splitlines() if ln.strip()][-1].strip()


def prepared(cmd: str):
    """The command as it runs here (module docstring), or None for an install line."""
    cmd = re.sub(r"^bash scripts/install\.sh && ", "", cmd)
    if INSTALL.match(cmd):
        return None
    return cmd.replace(".venv/bin/", f"{BIN}/")


@pytest.fixture(scope="session")
def reader_files(tmp_path_factory):
    """What a reader of the docs brings: their model, data, weights and checkpoints."""
    from kdbench.adapters.compat import prepare_robustbench
    from kdbench.models import build_model
    from kdbench.weights import save_weights

    d = tmp_path_factory.mktemp("reader")
    torch.manual_seed(0)
    (d / "my_models.py").write_text(
        "import torch.nn as nn\n\n"
        "def build(num_classes=10, in_channels=3, input_size=32):\n"
        "    return nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4),\n"
        "                         nn.Flatten(), nn.Linear(8 * 16, num_classes))\n")
    rng = np.random.RandomState(0)
    np.savez(d / "my_data.npz", x=rng.rand(24, 3, 32, 32).astype(np.float32), y=rng.randint(0, 10, 24))
    save_weights(build_model("resnet18", 10, 3, 32), d / "w.safetensors")
    (d / "my_package").mkdir()
    (d / "my_package" / "__init__.py").write_text("")
    (d / "my_package" / "models.py").write_text(
        "from kdbench.models import build_model\n\n"
        "def resnet(num_classes=10, in_channels=3, input_size=32):\n"
        "    return build_model('preact-resnet18', num_classes, in_channels, input_size)\n")
    save_weights(build_model("preact-resnet18", 10, 3, 32), d / "ckpt.safetensors")
    c10 = d / "data" / "cifar-10-batches-bin"  # CIFAR-10's binary format: label byte + 3072 pixel bytes
    c10.mkdir(parents=True)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        rec = np.concatenate([rng.randint(0, 10, (64, 1)), rng.randint(0, 256, (64, 3072))], 1).astype(np.uint8)
        (c10 / name).write_bytes(rec.tobytes())
    prepare_robustbench()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    zoo = model_dicts[BenchmarkDataset("cifar10")][ThreatModel("Linf")]
    rb = d / "robustbench" / "cifar10" / "Linf"
    rb.mkdir(parents=True)
    for name in ("Wong2020Fast", "Zhang2019Theoretically"):  # README / guide, configs/rslad/cifar10.yaml
        torch.save({"state_dict": zoo[name]["model"]().state_dict()}, rb / f"{name}.pt")
    return d


def _workdir(tmp_path, reader_files) -> Path:
    w = tmp_path / "work"
    shutil.copytree(reader_files, w, ignore=shutil.ignore_patterns("robustbench"))
    shutil.copytree(ROOT / "leaderboards", w / "leaderboards")
    for name in ("configs", "recipes", "scripts"):
        (w / name).symlink_to(ROOT / name)
    return w


def _env(w: Path, reader_files: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("KDBENCH_PLUGINS", "PYTHONPATH")}
    env.update({"PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}", "KDBENCH_SMOKE": "1",
                "KDBENCH_DATA_DIR": str(w / "data"), "KDBENCH_ROBUSTBENCH_DIR": str(reader_files / "robustbench"),
                "OMP_NUM_THREADS": "1", "KDBENCH_PROGRESS_SECONDS": "60"})
    return env


@pytest.mark.subprocess
@pytest.mark.parametrize("doc", DOCS, ids=[p.name for p in DOCS])
def test_every_block_runs(doc, tmp_path, reader_files):
    todo = [(lang, code) for lang, code in blocks(doc) if lang in ("bash", "python")]
    if not todo:
        assert "```bash" not in doc.read_text() and "```python" not in doc.read_text()
        return
    w = _workdir(tmp_path, reader_files)
    env = _env(w, reader_files)
    ran = 0
    for lang, code in todo:
        if lang == "python":
            first = code.splitlines()[0].strip()
            m = re.fullmatch(r"# (\w+)\.py", first)
            if m:
                (w / f"{m.group(1)}.py").write_text(code)
                cmd = [sys.executable, "-c", f"import {m.group(1)}"]
            else:
                cmd = [sys.executable, "-c", code]
            r = subprocess.run(cmd, cwd=w, env=env, capture_output=True, text=True, timeout=600)
            assert r.returncode == 0, f"{doc.name}: python block failed:\n{code}\n{r.stderr[-3000:]}"
            ran += 1
            continue
        for c in commands(code):
            if "python -m pytest" in c:  # the README's test command is this suite
                assert c.replace("bash scripts/install.sh && ", "") == ci_test_command(), c
                continue
            run = prepared(c)
            if run is None:
                continue
            t0 = time.time()
            r = subprocess.run(["bash", "-c", run], cwd=w, env=env, capture_output=True, text=True, timeout=600)
            print(f"{time.time() - t0:6.1f} s  {c}")  # shown with -s, or on failure
            allowed = (0, 1) if "# exit 1" in c else (0,)
            assert r.returncode in allowed, f"{doc.name}: `{c}` exited {r.returncode}:\n{r.stderr[-3000:]}"
            ran += 1
    installs = [c for lang, code in todo if lang == "bash" for c in commands(code) if prepared(c) is None]
    assert ran + len(installs) > 0


def test_the_github_actions_example_installs_kdbench_from_its_repository_and_pins_cpu_torch():
    """docs/leaderboards.md's workflow: parses, installs the CPU torch from PyTorch's index before
    kdbench, kdbench from git at a pinned ref, and gates with `kdbench check`."""
    (wf,) = [code for lang, code in blocks(ROOT / "docs" / "leaderboards.md") if lang == "yaml"]
    steps = yaml.safe_load(wf)["jobs"]["robust-accuracy"]["steps"]
    runs = [s["run"] for s in steps if "run" in s]
    torch_i = next(i for i, r in enumerate(runs) if r.startswith("pip install torch==2.13.0"))
    assert "--index-url https://download.pytorch.org/whl/cpu" in runs[torch_i]
    kd_i = next(i for i, r in enumerate(runs) if "kdbench @ git+" in r)
    assert torch_i < kd_i and "@${{ vars.KDBENCH_REF }}" in runs[kd_i]
    assert any(r.startswith("kdbench check ") for r in runs)


def test_install_scripts_need_no_local_wheel_directory():
    """.ci/run and scripts/install.sh name no local wheel directory or find-links: what they
    install comes from pip's indexes (or $KDBENCH_TORCH_INDEX)."""
    for p in (ROOT / ".ci/run", ROOT / "scripts/install.sh"):
        text = p.read_text()
        code = "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))
        assert not re.search(r"find-links|/opt/|wheels?/|file://|--no-index", code), p
    assert '--index-url "$KDBENCH_TORCH_INDEX"' in (ROOT / "scripts/install.sh").read_text()


def test_the_readme_test_command_is_what_ci_runs():
    cmds = [c for lang, code in blocks(ROOT / "README.md") if lang == "bash" for c in commands(code)]
    assert shlex.split(ci_test_command())[-1] == "tests"
    assert f"bash scripts/install.sh && {ci_test_command()}" in cmds


def test_readme_times_stand_in_models_keep_every_point_so_their_times_are_upper_bounds():
    """benchmarks/readme_times.py --stand-ins times the CIFAR-10 evaluations on models whose class-0
    logit is raised, on images labelled 0: every point must stay correct under attack, so every
    attack spends its whole budget (an upper bound on a real model's time)."""
    import kdbench
    from kdbench.models import build_model

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import readme_times

    my_models = {}  # the my_models.py it writes
    exec(readme_times.MY_MODELS.format(r=readme_times.RAISE), my_models)
    x, y = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.zeros(4, dtype=torch.long)
    for model in (readme_times._raise_class0(build_model("resnet18", 10, 3, 32)), my_models["build"]()):
        res = kdbench.evaluate(model.eval(), x, y, attacks=["pgd:steps=10"], eps=0.5, checks=False,
                               sensitivity=False, progress=False)
        assert res.clean_accuracy == 1.0 and res.attacks["pgd:steps=10"].robust_accuracy == 1.0
        assert res.attacks["pgd:steps=10"].passes.backward == 4 * 10  # the whole budget on every point
