"""Regenerate configs/<method>/<dataset>.yaml: every registered method, its defaults read from
the method class (the one place they live; docs/methods.md), the papers' settings on top.

    python scripts/make_configs.py

Paper scale (cifar10, cifar100): the papers' students, teachers by RobustBench name, official
optimiser, schedule, attack and loss constants.  Small scale (digits, mnist5k, fashion-mnist):
smallcnn students distilled from kdbench-trained teachers in runs/<dataset>-pgd-at (and
runs/<dataset>-natural), trained first with configs/pgd-at/<dataset>.yaml.
"""
from pathlib import Path

import yaml

from kdbench.methods import METHODS, get_method

ROOT = Path(__file__).resolve().parents[1] / "configs"
C10_TEACHER = "robustbench:cifar10/Linf/Zhang2019Theoretically"  # TRADES WRN-34-10 (model_cifar_wrn.pt)
C10_NATURAL = "robustbench:cifar10/Linf/Standard"
C100_TEACHER = "robustbench:cifar100/Linf/Gowal2020Uncovering"  # DeepMind WRN-70-16, no extra data
C100_LTD = "robustbench:cifar100/Linf/Chen2021LTD_WRN34_10"
EPS8, STEP2 = 8 / 255, 2 / 255

SMALL = {"digits": {"epochs": 10, "eps": 0.1}, "mnist5k": {"epochs": 10, "eps": 0.3},
         "fashion-mnist": {"epochs": 10, "eps": 0.1}}


def defaults(method, *keys, **overrides):
    """``method_params`` for a config: the method class's defaults for ``keys``, then ``overrides``
    (the paper settings that differ from them)."""
    params = get_method(method).params
    return {**{k: params[k] for k in keys}, **overrides}


def sgd(lr=0.1, wd=2e-4, nesterov=False):
    return {"name": "sgd", "lr": lr, "momentum": 0.9, "weight_decay": wd, "nesterov": nesterov}


def paper(method, dataset):
    c100 = dataset == "cifar100"
    base = {"method": method, "dataset": dataset, "model": "resnet18", "batch_size": 128,
            "attack": {"eps": EPS8, "step_size": STEP2, "steps": 10}, "eval": {"n": 1000, "pgd_steps": 20}}
    teacher = C100_TEACHER if c100 else C10_TEACHER
    if method in ("ard",):
        return {**base, "teachers": [C100_LTD if c100 else C10_TEACHER], "epochs": 200,
                "batch_size": 256 if c100 else 128, "optimizer": sgd(),
                "schedule": {"name": "multistep", "milestones": [100, 150], "gamma": 0.1},
                "method_params": defaults("ard", "alpha", "tau", "released_lr_schedule")}
    if method in ("iad", "iad-ii"):
        teachers = [C100_LTD if c100 else C10_TEACHER] + ([C10_NATURAL] if method == "iad-ii" and not c100 else [])
        if method == "iad-ii" and c100:
            teachers.append("runs/cifar100-natural-resnet18")
        mp = defaults(method, "tau", "beta", begin=60 if method == "iad" else 40)
        mp.update(defaults(method, "released_lr_schedule", *(("alpha",) if method == "iad" else ("alpha1", "alpha2"))))
        return {**base, "teachers": teachers, "epochs": 200, "optimizer": sgd(),
                "schedule": {"name": "multistep", "milestones": [100, 150], "gamma": 0.1}, "method_params": mp}
    if method in ("rslad", "mtard"):
        teachers = [teacher] + ([C10_NATURAL if not c100 else "runs/cifar100-natural-wrn-22-6"]
                                if method == "mtard" else [])
        mp = {"kl_scale": 10.0} if c100 else defaults(method, "kl_scale")
        mp.update(defaults(method, *(("alpha", "fp16_teacher") if method == "rslad" else ("eta", "beta"))))
        return {**base, "teachers": teachers, "epochs": 300, "optimizer": sgd(),
                "schedule": {"name": "multistep", "milestones": [215, 260, 285], "gamma": 0.1},
                "attack": {"eps": EPS8, "step_size": STEP2, "steps": 10}, "method_params": mp}
    if method in ("adaad", "adaiad"):
        t = C100_LTD if c100 else "robustbench:cifar10/Linf/Chen2021LTD_WRN34_20"
        mp = defaults("adaad", "alpha", "reduction", **({"reduction": "batchmean"} if c100 else {})) \
            if method == "adaad" else defaults("adaiad", "alpha", "tau", "beta", begin=60)
        return {**base, "teachers": [t], "epochs": 200, "optimizer": sgd(wd=5e-4), "seed": 42,
                "schedule": {"name": "multistep", "milestones": [100, 150], "gamma": 0.1}, "method_params": mp}
    if method in ("dd", "takd"):
        return {**base, "model": "cwnet", "teachers": ["runs/cifar-dd-teacher"] if method == "dd" else [],
                "epochs": 50, "augment": False, "optimizer": sgd(lr=0.01, wd=0.0, nesterov=True),
                "schedule": {"name": "constant"}, "eval": {"n": 1000, "pgd_steps": 20, "select": "clean"},
                "method_params": defaults("dd", "T") if method == "dd" else defaults("takd", "loss", "T")}
    if method == "darht":  # paper (seed 001, section 4): 100 epochs, lr 0.1, wd 2e-4; code: batch 256, step 0.003
        vit = f"runs/{dataset}-vit-pgd-at"  # configs/pgd-at/{dataset}-vit.yaml
        teachers = [C100_TEACHER, vit] if c100 else [C10_TEACHER, "robustbench:cifar10/Linf/Chen2021LTD_WRN34_20", vit]
        return {**base, "teachers": teachers, "epochs": 100, "batch_size": 256, "optimizer": sgd(wd=2e-4),
                "schedule": {"name": "multistep", "milestones": [50, 75], "gamma": 0.1},
                "attack": {"eps": 0.031, "step_size": 0.003, "steps": 10},
                "method_params": defaults("darht", "samples", "dropout", "normalise_weights", "kl_direction")}
    if method in ("smaraad", "smaraadpp"):  # seed 002, section 4.1
        return {**base, "teachers": [C100_LTD if c100 else C10_TEACHER], "epochs": 200, "batch_size": 256,
                "optimizer": sgd(wd=5e-4), "schedule": {"name": "multistep", "milestones": [115, 160, 185], "gamma": 0.1}}
    if method == "agkd-bml":  # official code (CIFAR-10 only): WRN-28-10 from a natural WRN-28-10, inputs in [-1, 1]
        return {**base, "model": "wrn-28-10", "model_kwargs": {"mean": [0.5] * 3, "std": [0.5] * 3},
                "teachers": [f"runs/{dataset}-natural-wrn-28-10"], "epochs": 200, "optimizer": sgd(wd=2e-4),
                "schedule": {"name": "multistep", "milestones": [100, 150], "gamma": 0.1},
                "eval": {"n": 1000, "pgd_steps": 20, "select": "clean"}}
    if method in ("pgd-at", "trades", "natural"):
        cfg = {**base, "model": "preact-resnet18", "epochs": 200, "optimizer": sgd(wd=5e-4),
               "schedule": {"name": "multistep", "milestones": [100, 150], "gamma": 0.1}}
        if method == "trades":
            cfg.update({"model": "wrn-34-10", "epochs": 76, "optimizer": sgd(wd=2e-4),
                        "schedule": {"name": "multistep", "milestones": [75], "gamma": 0.1},
                        "attack": {"eps": 0.031, "step_size": 0.007, "steps": 10},
                        "method_params": defaults("trades", "beta")})
        if method == "natural":
            cfg.pop("attack")
        return cfg
    raise KeyError(method)


def small(method, dataset):
    s = SMALL[dataset]
    teacher, natural = f"runs/{dataset}-pgd-at", f"runs/{dataset}-natural"
    cfg = {"method": method, "dataset": dataset, "model": "smallcnn", "epochs": s["epochs"],
           "optimizer": sgd(wd=5e-4), "attack": {"eps": s["eps"], "steps": 10}, "eval": {"n": 500, "pgd_steps": 20}}
    if method in ("pgd-at", "trades", "natural"):
        return cfg
    cfg["teachers"] = [teacher] + ([natural] if method in ("iad-ii", "mtard") else [])
    if method == "darht":  # heterogeneous: a CNN and a ViT teacher (configs/natural/<dataset>-vit.yaml)
        cfg["teachers"] = [teacher, f"runs/{dataset}-vit-natural"]
    if method == "agkd-bml":
        cfg["teachers"] = [natural]
    if method in ("dd", "takd"):
        cfg.update({"model": "cwnet" if dataset != "digits" else "smallcnn", "optimizer": sgd(lr=0.01, wd=0.0,
                    nesterov=True), "schedule": {"name": "constant"}, "augment": False,
                    "method_params": defaults("dd", "T") if method == "dd" else defaults("takd", "loss", "T")})
        cfg["teachers"] = [f"runs/{dataset}-dd-teacher"] if method == "dd" else [teacher]
    return cfg


HEADER = ("# kdbench config: {method} on {dataset} ({scale}).\n"
          "# Generated by scripts/make_configs.py from the official defaults (docs/methods.md).\n"
          "# Run: kdbench train --config configs/{method}/{dataset}.yaml --out runs/{dataset}-{method}\n")
NOTES = {"dd": "# The teacher is trained first with the same file and no teacher: "
               "kdbench train --config configs/dd/{dataset}.yaml --set teachers=[] --out runs/{dataset}-dd-teacher\n",
         "takd": "# A chain: kdbench train --config configs/takd/{dataset}.yaml --set teachers=[] --chain 2 "
                 "--out runs/{dataset}-takd   (--chain 6: the multi-step chain of seed 000)\n"}


def main():
    methods = [m.name for m in METHODS.values()]  # every registered method
    # The ViT teachers of DARHT's heterogeneous setting, trained with Adam (SGD at lr 0.1 does not
    # train them): PGD-AT at paper scale, natural at small scale (PGD-AT from scratch does not get
    # off the ground in a CPU budget; the DARHT paper also uses natural ViT teachers).
    for ds in ("cifar10", "cifar100", *SMALL):
        method = "pgd-at" if ds.startswith("cifar") else "natural"
        cfg = paper(method, ds) if ds.startswith("cifar") else small(method, ds)
        cfg.update({"model": "vit", "optimizer": {"name": "adam", "lr": 1e-3, "weight_decay": 0.0}})
        if method == "natural":
            cfg.pop("attack", None)
        text = HEADER.format(method=method, dataset=ds, scale="a ViT teacher for DARHT").replace(
            f"runs/{ds}-{method}", f"runs/{ds}-vit-{method}").replace(f"{ds}.yaml", f"{ds}-vit.yaml")
        (ROOT / method / f"{ds}-vit.yaml").write_text(text + yaml.safe_dump(cfg, sort_keys=False))
    for m in methods:
        for ds in ("cifar10", "cifar100", *SMALL):
            cfg = paper(m, ds) if ds.startswith("cifar") else small(m, ds)
            scale = "paper scale" if ds.startswith("cifar") else "small scale, offline"
            p = ROOT / m / f"{ds}.yaml"
            p.parent.mkdir(parents=True, exist_ok=True)
            text = HEADER.format(method=m, dataset=ds, scale=scale) + NOTES.get(m, "").format(dataset=ds)
            p.write_text(text + yaml.safe_dump(cfg, sort_keys=False))


if __name__ == "__main__":
    main()
