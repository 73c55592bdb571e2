"""Progress of every phase (kdbench.progress) and the budgeted validity checks (issue 21, items 1-2)."""
import logging
import re
import sys
from pathlib import Path

import pytest
import torch

from kdbench.errors import KdbenchError
from kdbench.evaluation import evaluate
from kdbench.attacks.pgd import early_stop_pgd
from kdbench.evaluation.validity import budget_checks

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "attacks"))
from linear_case import make_case  # noqa: E402


@pytest.fixture(scope="module")
def embedded():
    from kdbench.cli.evaluate import DEFAULT_WEIGHTS
    from kdbench.specs import resolve_model

    return resolve_model("smallcnn", 10, 1, 8, weights=str(DEFAULT_WEIGHTS)).model


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_early_stop_pgd_finds_the_exact_boundary_of_a_linear_model(norm):
    """On logits (0, w.x) the minimal distance is |w.x| / ||w||_1 (L-inf) or / ||w||_2 (L2);
    PGD breaks every point just above it, none just below, and stops on each broken point."""
    model, x, y, l2, linf, _ = make_case()
    exact = linf if norm == "Linf" else l2
    for scale, broken in ((1.02, True), (0.98, False)):
        for i in range(len(y)):
            torch.manual_seed(0)
            robust, _, spent = early_stop_pgd(model, x[i:i + 1], y[i:i + 1], float(exact[i]) * scale, norm, 40,
                                           float(exact[i]) * scale / 4)
            assert bool(robust[0]) is not broken, (norm, scale, i)
            assert (spent < 41) if broken else (spent == 41)  # a broken point stops; steps + the last check


def test_budget_checks_stay_within_their_budget_and_record_it():
    model, x, y, _, linf, _ = make_case()
    eps = float(linf.median())
    free = budget_checks(model, x, y, eps, "Linf", 0, "cpu", 64)
    assert free["n"] == len(y) and free["budget_passes"] is None and free["n_convergence"] == len(y)
    # exact: PGD-20 at eps leaves robust exactly the points whose distance exceeds eps
    assert free["curve"][f"{eps:.6g}"] == pytest.approx((linf > eps).float().mean().item())
    assert free["at_large_eps"] == 0.0 and free["pgd100x5"] == free["pgd20"]
    capped = budget_checks(model, x, y, eps, "Linf", 0, "cpu", 64, budget=free["passes"] / 4)
    assert capped["passes"] <= free["passes"] / 4 * 1.05 and 8 <= capped["n"] < len(y)
    assert capped["budget_passes"] == int(free["passes"] / 4)


def test_checks_and_probe_cost_about_a_tenth_of_the_attacks(embedded, digits):
    """Issue 21: the checks and the gradient probe add at most ~10 % to the attacks' passes (a
    block of 8 points may overshoot slightly); a larger share buys more points and restarts."""
    def overhead(r):
        att = sum(a["passes"]["forward"] + a["passes"]["backward"] for a in r["attacks"].values())
        return (r["validity"]["budget_checks"]["passes"] + r["n"]) / att, r["validity"]["budget_checks"]

    r = evaluate(embedded, dataset=digits, n=300, attacks=["pgd"], device="cpu", progress=False).to_dict()
    share, bc = overhead(r)
    assert share <= 0.11 and bc["n"] >= 8
    r = evaluate(embedded, dataset=digits, n=300, attacks=["pgd"], device="cpu", progress=False,
                 checks_share=2.0).to_dict()
    share2, bc2 = overhead(r)
    assert share2 <= 2.0 and bc2["n"] > bc["n"] and bc2["n_convergence"] > 0 and bc2["restarts"] >= 1


def test_lines_progress_moves_inside_a_library_attack(embedded, digits, capsys, monkeypatch):
    """Line mode (stderr not a terminal): a line at each phase's start and end and, with
    KDBENCH_PROGRESS_SECONDS=0, on every model pass: pyautoattack takes the whole chunk at once,
    yet its pass count moves between the start and the end."""
    monkeypatch.setenv("KDBENCH_PROGRESS_SECONDS", "0")
    evaluate(embedded, dataset=digits, n=40, attacks=["apgd-ce"], device="cpu", progress="lines")
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("[kdbench] clean pass + gradient probe: started 0/40 points")
    mine = [line for line in err if line.startswith("[kdbench] apgd-ce (autoattack):")]
    passes = [int(m.group(1).replace(",", "")) for m in map(re.compile(r"([\d,]+) passes").search, mine) if m]
    assert mine[0].startswith("[kdbench] apgd-ce (autoattack): started 0/40 points")
    assert mine[-1].startswith("[kdbench] apgd-ce (autoattack): done, 40/40 points")
    assert len(set(passes)) > 10 and passes == sorted(passes)
    assert any(line.startswith("[kdbench] validity checks: done,") for line in err)


def test_the_api_logs_progress_and_can_be_silenced(embedded, digits, capsys, caplog):
    with caplog.at_level(logging.INFO, logger="kdbench"):
        evaluate(embedded, dataset=digits, n=20, attacks=["fgsm"], device="cpu")
    msgs = [r.getMessage() for r in caplog.records if r.name == "kdbench"]
    assert any(m.startswith("fgsm (torchattacks): done, 20/20 points") for m in msgs)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="kdbench"):
        evaluate(embedded, dataset=digits, n=20, attacks=["fgsm"], device="cpu", progress=False)
    assert not [r for r in caplog.records if r.name == "kdbench"] and not capsys.readouterr().err
    with pytest.raises(KdbenchError, match="progress must be one of bar, lines, log, off"):
        evaluate(embedded, dataset=digits, n=20, attacks=["fgsm"], device="cpu", progress="loud")


def test_training_reports_epochs_as_lines(tmp_path, capsys):
    from kdbench.config import TrainConfig
    from kdbench.training import train

    cfg = TrainConfig(method="natural", dataset="digits", epochs=2, train_subset=64, batch_size=32)
    train(cfg, tmp_path / "run", progress="lines")
    err = capsys.readouterr().err
    assert "[kdbench] natural epoch 1/2: started 0/2 batches" in err
    assert re.search(r"\[kdbench\] natural epoch 2/2: done, 2/2 batches, loss [\d.]+ acc [\d.]+", err)
    assert re.search(r"\[kdbench\] epoch 2: loss [\d.]+ train acc", err)
