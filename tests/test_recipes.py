"""Leaderboard recipes: valid shell, every method and config they name exists, and the
Fashion-MNIST recipe's budget is what its header says."""
import re
import subprocess

import pytest
import yaml
from conftest import ROOT

from kdbench.config import load_config
from kdbench.methods import METHODS

RECIPES = sorted((ROOT / "leaderboards" / "recipes").glob("*.sh"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_is_valid_shell(path):
    r = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def _default(text, var):
    return re.search(rf'{var}=\$\{{{var}:-"?([^"}}]*)"?\}}', text).group(1).split()


def test_recipes_name_registered_methods_and_existing_configs():
    fm = (ROOT / "leaderboards" / "recipes" / "fashion-mnist.sh").read_text()
    methods = _default(fm, "METHODS")
    assert len(methods) == 16 and all(m.replace("darht-het", "darht") in METHODS for m in methods)
    assert "--train-subset 5000" in fm and "--epochs 5" in fm
    assert _default(fm, "N") == ["1000"] and _default(fm, "SUITE0") == ["standard"]
    assert _default(fm, "SEED_N") == ["500"] and int(_default(fm, "SEED_N")[0]) <= int(_default(fm, "N")[0])
    ps = (ROOT / "leaderboards" / "recipes" / "paper-scale.sh").read_text()
    for ds in ("cifar10", "cifar100"):
        for m in _default(ps, "METHODS") + ["natural"]:
            cfg = load_config(ROOT / "configs" / m / f"{ds}.yaml")  # parses and validates
            assert cfg.method in METHODS and cfg.dataset == ds
        vit = yaml.safe_load((ROOT / "configs" / "pgd-at" / f"{ds}-vit.yaml").read_text())
        assert vit["model"] == "vit" and vit["optimizer"]["name"] == "adam"
    for ds in ("digits", "mnist5k", "fashion-mnist"):
        for m in _default(ps, "METHODS"):
            assert load_config(ROOT / "configs" / m / f"{ds}.yaml").method == m
