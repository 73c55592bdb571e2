import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("KDBENCH_DATA_DIR", str(ROOT / ".pytest_cache" / "no-data"))
torch.set_num_threads(int(os.environ.get("KDBENCH_TEST_THREADS", min(2, os.cpu_count() or 1))))


class ModeSpy(torch.nn.Module):
    """Wraps a model and records the train/eval mode of every forward pass."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.modes = inner, []

    def forward(self, x):
        self.modes.append(self.training)
        return self.inner(x)


class Scaled(torch.nn.Module):
    """A model's logits times ``s`` (10^4: a saturated float32 softmax, as after T = 100
    defensive distillation)."""

    def __init__(self, inner, s):
        super().__init__()
        self.inner, self.s = inner, s

    def forward(self, x):
        return self.inner(x) * self.s


_CURRENT = {}


@pytest.fixture(autouse=True)
def _current_test(request):
    _CURRENT["node"] = request.node
    yield
    _CURRENT.pop("node", None)


def run_cli(*args, timeout=600, env=None):
    """Run ``python -m kdbench ARGS``; returns the CompletedProcess (text).  Only tests marked
    ``@pytest.mark.subprocess`` may (``-m "not subprocess"`` then runs the in-process suite)."""
    node = _CURRENT.get("node")
    assert node is None or node.get_closest_marker("subprocess"), \
        f"{node.nodeid} runs a subprocess: mark it @pytest.mark.subprocess"
    e = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "kdbench", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=e, cwd=str(ROOT))


@pytest.fixture(scope="session")
def digits():
    from kdbench.data import get_dataset

    return get_dataset("digits")


@pytest.fixture(scope="session")
def digits_teacher(tmp_path_factory):
    """A PGD-AT teacher on digits, trained once per test session (a few seconds)."""
    from kdbench.config import TrainConfig
    from kdbench.training import train

    out = tmp_path_factory.mktemp("runs") / "teacher"
    train(TrainConfig(method="pgd-at", dataset="digits", epochs=3), out, progress=False)
    return out
