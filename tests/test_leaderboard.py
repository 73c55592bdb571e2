"""Leaderboards and the CI regression gate: row building, statistics (t-intervals, exact
Mann-Whitney U, McNemar, two-proportion z) against hand-computed values, and the CLIs end to end."""
import csv
import json

import pytest
import torch
import yaml
from conftest import run_cli

from kdbench import leaderboard as lb
from kdbench.check import check, mcnemar_worse, two_proportion_worse
from kdbench.attacks.suites import SUITES
from kdbench.evaluation.metrics import wilson
from kdbench.errors import KdbenchError


def fake_result(name, seed, robust, clean=None, flags=(), eps=0.1, sha=None):
    """A result dict shaped like kdbench evaluate's, from per-attack per-sample outcomes."""
    n = len(next(iter(robust.values())))
    clean = clean or [True] * n
    worst = [all(v) for v in zip(*robust.values())]
    attacks = {a: {"robust_accuracy": sum(f) / n, "ci95": list(wilson(sum(f), n))} for a, f in robust.items()}
    return {"clean_accuracy": sum(clean) / n, "clean_ci95": list(wilson(sum(clean), n)), "n": n, "attacks": attacks,
            "config": {"norm": "Linf", "eps": eps},
            "worst_case": {"robust_accuracy": sum(worst) / n, "ci95": list(wilson(sum(worst), n)),
                           "attacks": list(robust)},
            "per_sample": {"labels": [0] * n, "correct_clean": clean, "robust": robust},
            "validity": {"flags": [{"name": f, "message": ""} for f in flags]},
            "provenance": {"dataset": {"name": "toy", "subset_hash": "h"}, "key": f"{name}{seed}", "seed": 0,
                           "model": {"spec": f"runs/{name}-s{seed}", "arch": "smallcnn", "weights_sha256": sha,
                                     "run": {"name": f"{name}-s{seed}", "method": name.split("-")[0], "seed": seed,
                                             "teachers": ["runs/t"], "epochs_done": 5, "train_seconds": 36.0}}}}


def quick(k, n=100):
    """Quick-suite outcomes with exactly k robust points (the same points for every attack)."""
    return {a: [i < k for i in range(n)] for a in SUITES["quick"]}


def test_rows_group_seeds_sort_and_statistics():
    std = {**quick(40), "autoattack": [i < 38 for i in range(100)], "square": [i < 45 for i in range(100)]}
    results = [fake_result("ard", 0, std), fake_result("ard", 1, quick(50)), fake_result("ard", 2, quick(60)),
               fake_result("rslad", 0, {**quick(30), "autoattack": [i < 29 for i in range(100)]}),
               fake_result("rslad", 1, quick(20)), fake_result("rslad", 2, quick(10))]
    rows = lb.build_rows(results)
    assert [r["name"] for r in rows] == ["ard", "rslad"]  # by AutoAttack: 38 > 29
    ard = rows[0]
    assert ard["seeds"] == 3 and ard["autoattack"] == 0.38 and ard["worst_case"] == 0.38
    assert ard["w_robust"] == pytest.approx((1.0 + 0.38) / 2)
    assert ard["quick_worst_seed_mean"] == pytest.approx(0.5)
    assert ard["quick_worst_seed_sd"] == pytest.approx(0.1)
    lo, hi = (float(x) for x in ard["quick_worst_seed_ci95"].split("-"))
    assert hi - 0.5 == pytest.approx(4.302652729911275 * 0.1 / 3 ** 0.5, abs=1e-4)  # t(0.975, 2)
    # exact two-sided Mann-Whitney U of (0.4, 0.5, 0.6) vs (0.3, 0.2, 0.1): U = 9, p = 2 / C(6, 3) = 0.1
    assert ard["mwu_vs_next"].startswith("U=9 p=0.1 ")
    assert rows[1]["mwu_vs_next"] is None
    assert rows[1]["quick_worst_seed_ci95"] == "0.0000-0.4484"  # 0.2 +/- 0.248, clipped at 0 accuracy
    assert lb.build_rows(results, method="rslad")[0]["name"] == "rslad"
    assert lb.pareto_front([(0.9, 0.1), (0.8, 0.5), (0.7, 0.4), (0.6, 0.5)]) == [0, 1]
    assert lb.build_rows(results, eps=0.2) == []


def test_seed_statistics_use_the_points_every_seed_shares():
    # seed 0 on 200 points (indices 0..199), seeds 1-2 on 100 of them (the even indices): the seed
    # statistics use those 100 shared points; the primary columns use all 200 of seed 0.
    r0 = fake_result("iad", 0, {a: [i < 100 for i in range(200)] for a in SUITES["quick"]})
    r0["per_sample"]["index"] = list(range(200))
    r1, r2 = fake_result("iad", 1, quick(30)), fake_result("iad", 2, quick(40))
    for r in (r1, r2):
        r["per_sample"]["index"] = list(range(0, 200, 2))
    row = lb.build_rows([r0, r1, r2])[0]
    assert row["worst_case"] == 0.5 and row["n"] == 200 and row["seed_points"] == 100
    # seed 0 on the even indices: 50 of its robust points (0, 2, .., 98) -> 0.5; seeds 1-2: 0.3, 0.4
    assert row["quick_worst_seed_mean"] == pytest.approx(0.4)
    assert row["quick_worst_seed_sd"] == pytest.approx(0.1)
    assert row["pgd20_seed_mean"] == pytest.approx(0.4) and row["clean_seed_mean"] == 1.0


def test_mcnemar_and_two_proportion_hand_values():
    base = [True] * 20 + [False] * 10
    new = [False] * 10 + [True] * 10 + [False] * 10  # 10 lost, none gained
    p, b, c = mcnemar_worse(base, new)
    assert (b, c) == (10, 0) and p == pytest.approx(2 ** -10)
    p, b, c = mcnemar_worse(base, base)
    assert p == 1.0
    p, _, _ = mcnemar_worse(base, [False] + [True] * 20 + [False] * 9)  # one lost, one gained
    assert p == pytest.approx(0.75)  # P(Bin(2, 1/2) >= 1)
    # 50/100 -> 40/100: pooled p = 0.45, z = -0.1 / sqrt(0.2475 * 0.02) = -1.4213
    assert two_proportion_worse(50, 100, 40, 100) == pytest.approx(0.07761, abs=1e-4)
    assert two_proportion_worse(50, 100, 60, 100) > 0.9


def write(tmp_path, name, data):
    p = tmp_path / name
    p.write_text(json.dumps(data))
    return p


def test_check_paired_unpaired_tolerance_and_flags(tmp_path):
    base = write(tmp_path, "base.json", fake_result("ard", 0, quick(500, 1000)))
    reseed = dict(quick(500, 1000))  # another attack seed: a few points flip both ways
    reseed["pgd"] = [(i < 497) or (600 <= i < 603) for i in range(1000)]
    same = write(tmp_path, "same.json", fake_result("ard", 0, reseed))
    regressed, text = check(same, base, metric="pgd")
    assert not regressed and "paired McNemar: 3 lost, 3 gained" in text
    regressed, text = check(same, base)  # the worst case keeps the losses only: p = 1/8
    assert not regressed and "3 lost, 0 gained, one-sided p = 0.125" in text
    drop = write(tmp_path, "drop.json", fake_result("ard", 0, quick(450, 1000)))
    regressed, text = check(drop, base)
    assert regressed and "50 lost, 0 gained" in text and "REGRESSION" in text
    assert not check(drop, base, tolerance="6%")[0] and check(drop, base, tolerance="0.04")[0]
    other = fake_result("ard", 0, quick(490, 1000))
    other["provenance"]["dataset"]["subset_hash"] = "other-points"
    regressed, text = check(write(tmp_path, "o.json", other), base)
    assert not regressed and "two-proportion" in text
    rise = write(tmp_path, "rise.json", fake_result("ard", 0, quick(550, 1000)))
    assert not check(rise, base)[0]  # one-sided: a rise is no regression
    regressed, text = check(rise, base, two_sided=True)  # a reproduction check fails on it
    assert regressed and "two-sided p" in text and "0 lost, 50 gained" in text
    flagged = write(tmp_path, "f.json", fake_result("ard", 0, quick(500, 1000), flags=["zero_gradients"]))
    regressed, text = check(flagged, base)
    assert regressed and "zero_gradients" in text
    with pytest.raises(KdbenchError, match="tolerance"):
        check(same, base, tolerance="lots")
    with pytest.raises(KdbenchError, match="not in the result"):
        check(same, base, metric="square")


@pytest.mark.subprocess
def test_leaderboard_and_check_cli(tmp_path, digits_teacher):
    db, run = tmp_path / "r.db", digits_teacher
    r = run_cli("evaluate", "--model", run, "--n", 150, "--attacks", "fgsm,pgd", "--db", db, "--no-checks",
                "--no-teachers", "--out", tmp_path / "e.json", "--no-progress")
    assert r.returncode == 0, r.stderr
    r = run_cli("evaluate", "--model", run, "--n", 150, "--attacks", "fgsm,pgd", "--db", db, "--no-checks",
                "--no-teachers", "--seed", 3, "--out", tmp_path / "e3.json", "--no-progress")
    assert r.returncode == 0, r.stderr
    r = run_cli("leaderboard", "--db", db, "--out", tmp_path / "board", "--checkpoints", tmp_path / "ck",
                "--results", tmp_path / "res", "--plots", tmp_path / "plots")
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(open(tmp_path / "board.csv")))
    assert len(rows) == 1 and rows[0]["name"] == "teacher" and rows[0]["method"] == "pgd-at"
    e = json.loads((tmp_path / "e3.json").read_text())
    assert float(rows[0]["pgd20"]) == pytest.approx(e["attacks"]["pgd"]["robust_accuracy"])  # the newest result
    assert "| teacher | pgd-at |" in (tmp_path / "board.md").read_text()
    assert json.loads((tmp_path / "board.json").read_text())[0]["architecture"] == "smallcnn"
    assert (tmp_path / "ck" / "teacher" / "best.safetensors").is_file()  # named by the run directory
    assert (tmp_path / "res" / "teacher.json").is_file()
    assert (tmp_path / "plots" / "pareto.png").stat().st_size > 5_000
    # the committed checkpoint re-evaluates and passes the gate against its own row; a weaker model fails it
    r = run_cli("evaluate", "--model", tmp_path / "ck" / "teacher", "--n", 150, "--attacks", "fgsm,pgd", "--db", "",
                "--no-checks", "--no-teachers", "--seed", 1, "--out", tmp_path / "again.json", "--no-progress")
    assert r.returncode == 0, r.stderr
    r = run_cli("check", tmp_path / "again.json", "--baseline", tmp_path / "board.csv", "--metric", "pgd")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "no regression" in r.stdout
    r = run_cli("check", tmp_path / "again.json", "--baseline", tmp_path / "res" / "teacher.json")
    assert r.returncode == 0 and "paired McNemar" in r.stdout, r.stdout
    r = run_cli("evaluate", "--model", "smallcnn", "--random-weights", "--dataset", "digits", "--n", 150,
                "--attacks", "fgsm,pgd", "--db", "", "--no-checks", "--out", tmp_path / "weak.json", "--no-progress")
    r = run_cli("check", tmp_path / "weak.json", "--baseline", tmp_path / "board.csv", "--row", "teacher",
                "--metric", "pgd")
    assert r.returncode == 1 and "REGRESSION" in r.stdout
    r = run_cli("check", tmp_path / "nope.json", "--baseline", tmp_path / "board.csv")
    assert r.returncode == 2 and r.stderr.startswith("kdbench: error:") and len(r.stderr.splitlines()) == 1
    r = run_cli("leaderboard", "--db", tmp_path / "missing.db")
    assert r.returncode == 2 and "results store (kdbench evaluate --db writes it): no such file or directory" in r.stderr


def test_check_pairs_a_subset_on_shared_test_indices(tmp_path):
    base = fake_result("ard", 0, quick(500, 1000))
    base["per_sample"]["index"] = list(range(0, 3000, 3))  # test-set indices of the 1 000 points
    sub = {a: f[::5] for a, f in quick(500, 1000).items()}  # 200 of them, same outcomes
    res = fake_result("ard", 0, sub)
    res["provenance"]["dataset"]["subset_hash"] = "another-subset"
    res["per_sample"]["index"] = base["per_sample"]["index"][::5]
    regressed, text = check(write(tmp_path, "r.json", res), write(tmp_path, "b.json", base), two_sided=True)
    assert not regressed and "paired McNemar on the 200 shared points: 0 lost, 0 gained" in text
    res["per_sample"]["robust"] = {a: [False] * 200 for a in sub}  # every shared robust point lost
    res["worst_case"]["robust_accuracy"] = 0.0
    regressed, text = check(write(tmp_path, "r.json", res), write(tmp_path, "b.json", base))
    assert regressed and "100 lost, 0 gained" in text, text


def test_export_checkpoints_keeps_chain_links_apart(tmp_path):
    from safetensors.torch import save_file

    from kdbench.leaderboard import export_checkpoints

    rows = []
    for run, chain in (("pgd-at-s0", None), ("takd-s0/student", {"root": "runs/takd-s0", "role": "student"}),
                       ("other/student", {"root": "runs/other", "role": "student"})):
        d = tmp_path / "runs" / run
        d.mkdir(parents=True)
        save_file({"w": torch.tensor([float(len(rows))])}, str(d / "best.safetensors"), metadata={"run": run})
        (d / "config.yaml").write_text(yaml.safe_dump({"method": "takd", "chain": chain, "model": "smallcnn",
                                                       "dataset_info": {}}))
        rows.append({"checkpoint": str(d / "best.safetensors")})  # a real safetensors file: boards copy no other
    dirs = export_checkpoints(rows, tmp_path / "ck")
    assert [d.relative_to(tmp_path / "ck").as_posix() for d in dirs] == ["pgd-at-s0", "takd-s0/student",
                                                                        "other/student"]
    assert (tmp_path / "ck" / "takd-s0" / "student" / "best.safetensors").read_bytes() == \
        (tmp_path / "runs" / "takd-s0" / "student" / "best.safetensors").read_bytes()
    assert rows[1]["checkpoint"] == str(tmp_path / "ck" / "takd-s0" / "student" / "best.safetensors")
