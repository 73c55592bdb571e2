"""The package's layers (docs/architecture.md): no import cycle between kdbench's modules, and
every import goes to the same layer or one below.  Imports inside functions count too: a lazy
import that runs back up a layer is still a circle a reader has to hold in mind."""
import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "kdbench"

# top-level module or package -> layer (lower layers never import higher ones)
LAYERS = {
    "errors": 0, "version": 0, "registry": 0, "device": 0, "distributed": 0, "fsutil": 0, "weights": 0,
    "progress": 0, "smoke": 0,
    "config": 1, "losses": 1, "data": 1, "models": 1, "rundir": 1,
    "adapters": 2, "attacks": 2,
    "methods": 3,
    "specs": 4,
    "training": 5, "evaluation": 5,
    "leaderboard": 6, "check": 6, "plots": 6,
    "cli": 7, "__main__": 7,
}


def _modules():
    out = {}
    for p in PKG.rglob("*.py"):
        rel = p.relative_to(PKG.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _imports(name: str, path: Path, modules: dict):
    """The kdbench modules ``name`` imports (anywhere in the file)."""
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("kdbench"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("kdbench"):
                continue
            for a in node.names:  # `from pkg import submodule` is an import of the submodule
                sub = f"{target}.{a.name}"
                found.add(sub if sub in modules else target)
    return {m for m in found if m in modules and m != name}


def _graph():
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _top(mod: str) -> str:
    return mod.split(".")[1] if "." in mod else ""


def test_every_module_has_a_layer():
    missing = sorted({_top(m) for m in _graph() if m != "kdbench" and _top(m) not in LAYERS})
    assert not missing, f"modules without a layer in LAYERS (and docs/architecture.md): {missing}"


def test_no_import_cycle():
    graph = _graph()
    graph.pop("kdbench", None)  # the package's face: lazy re-exports, imported by nobody inside
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if n == "kdbench":
                continue
            if state.get(n) == 1:
                cycles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_imports_run_down_the_layers():
    up = []
    for m, deps in _graph().items():
        if m == "kdbench":
            continue
        for d in deps:
            if d != "kdbench" and LAYERS[_top(d)] > LAYERS[_top(m)]:
                up.append(f"{m} (layer {LAYERS[_top(m)]}) imports {d} (layer {LAYERS[_top(d)]})")
    assert not up, "imports that run back up: " + "; ".join(sorted(up))


def test_the_cycle_check_finds_a_planted_cycle(tmp_path, monkeypatch):
    """The checker itself: two modules importing each other are reported."""
    pkg = tmp_path / "kdbench"
    (pkg / "a").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a" / "__init__.py").write_text("from .x import f\n")
    (pkg / "a" / "x.py").write_text("def f():\n    from ..b import g\n")
    (pkg / "b.py").write_text("from .a import x\n")
    monkeypatch.setattr(__import__(__name__), "PKG", pkg)
    with pytest.raises(AssertionError, match="kdbench.a.x -> kdbench.b -> kdbench.a.x"):
        test_no_import_cycle()


def test_public_api_at_the_top_level(digits_teacher):
    """``from kdbench import evaluate, load_model, train``; load_model returns an nn.Module."""
    import torch

    import kdbench
    from kdbench import evaluate, load_model, train  # noqa: F401
    from kdbench.data import get_dataset

    model = load_model(str(digits_teacher))
    assert isinstance(model, torch.nn.Module) and not model.training
    ds = get_dataset("digits")
    x, y = ds.test.images(torch.arange(16)), ds.test.y[:16]
    res = kdbench.evaluate(model, x, y, attacks=["fgsm"], eps=0.1, checks=False, sensitivity=False)
    assert res.n == 16 and 0 <= res.robust_accuracy("fgsm") <= res.clean_accuracy <= 1


PLUGINS = {  # one file per kind of extension (docs/architecture.md, "Where to add")
    "my_dataset.py": '''
import torch
from kdbench.data import DATASETS, Dataset, DatasetInfo, ImageSet, get_dataset

@DATASETS.register("{tag}-digits64")
def digits64(data_dir=None, download=True):
    d = get_dataset("digits")
    return Dataset(DatasetInfo("{tag}-digits64", 10, 1, 8, 0.1), d.test.subset(torch.arange(64)),
                   d.train.subset(torch.arange(64)))
''',
    "my_model.py": '''
import torch.nn as nn
from kdbench.models import MODELS

@MODELS.register("{tag}-linear")
def linear(num_classes, in_channels, input_size):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * input_size * input_size, num_classes))
''',
    "my_method.py": '''
import torch.nn.functional as F
from kdbench.methods import METHODS, Method
from kdbench.attacks.pgd import ce_pgd

@METHODS.register("{tag}-at")
class MyAT(Method):
    name = "{tag}-at"
    params = {{"weight": 1.0}}

    def perturb(self, student, x, y):
        return ce_pgd(student, x, y, self.attack, train_mode=False, start="uniform", clip_start=True)

    def loss(self, student, x, x_adv, y):
        s_adv = student(x_adv)
        return self.p["weight"] * F.cross_entropy(s_adv, y), s_adv
''',
    "my_attack.py": '''
import torch
from kdbench import register_attack

@register_attack("{tag}-corner", norms=("Linf",))
def corner(eps, norm, seed, num_classes, sign=1.0):
    def run(model, x, y):
        return (x + sign * eps).clamp(0, 1)
    return run
''',
}


def test_one_file_adds_a_dataset_model_method_and_attack(tmp_path, monkeypatch):
    """Each kind of extension is one file that registers itself: nothing else is edited."""
    import importlib
    import uuid

    import torch

    tag = f"x{uuid.uuid4().hex[:6]}"
    for name, src in PLUGINS.items():
        (tmp_path / name).write_text(src.replace("{tag}", tag).replace("{{", "{").replace("}}", "}"))
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in PLUGINS:
        importlib.import_module(name[:-3])

    from kdbench import evaluate, load_model, train
    from kdbench.config import TrainConfig
    from kdbench.data import get_dataset

    cfg = TrainConfig(method=f"{tag}-at", dataset=f"{tag}-digits64", model=f"{tag}-linear", epochs=1, batch_size=32)
    cfg.eval.n, cfg.eval.pgd_steps = 32, 2
    history = train(cfg, tmp_path / "run", progress=False)
    assert len(history) == 1 and 0 <= history[0]["clean_acc"] <= 1
    model = load_model(str(tmp_path / "run"))
    ds = get_dataset(f"{tag}-digits64")
    res = evaluate(model, dataset=ds, attacks=[f"{tag}-corner", f"{tag}-corner:sign=-1"], checks=False,
                   sensitivity=False)
    assert res.n == 64 and set(res.attacks) == {f"{tag}-corner", f"{tag}-corner:sign=-1"}
    assert res.attacks[f"{tag}-corner"].params == {"eps": 0.1, "sign": 1.0}
    assert all(a.robust_accuracy <= res.clean_accuracy for a in res.attacks.values())
    assert isinstance(model, torch.nn.Module)
