"""kdbench's own regression gate (leaderboards issue): re-evaluate a committed checkpoint of the
Fashion-MNIST board with the quick suite on 200 of the board's 1 000 test points and check it
against the committed numbers: two-sided and paired on the shared points against the committed
per-sample result (the numbers must reproduce: an attack that got weaker fails too), one-sided
against the CSV row (as a user's CI would)."""
import json

import pytest
from conftest import ROOT, run_cli

from kdbench.check import check
from kdbench.leaderboard import read_csv
from kdbench.rundir import restore_run

BOARD_DIR = ROOT / "leaderboards" / "fashion-mnist"
BOARD = BOARD_DIR / "board.csv"
RUNS = BOARD_DIR / "runs"  # committed runs: config, metrics, best.sha256
STORE = ROOT / "leaderboards" / "checkpoints"  # their weights, by content hash
RESULTS = BOARD_DIR / "results"
GATED = ["pgd-at"]  # rows re-evaluated on every CI run


@pytest.mark.subprocess
@pytest.mark.parametrize("name", GATED)
def test_committed_row_reproduces(name, tmp_path):
    row = {r["name"]: r for r in read_csv(BOARD)}[name]
    out = tmp_path / f"{name}.json"
    run_dir = restore_run(RUNS / f"{name}-s0", STORE, tmp_path / f"{name}-s0")
    r = run_cli("evaluate", "--model", run_dir, "--dataset", "fashion-mnist", "--n", 200, "--suite",
                "quick", "--seed", row["eval_seed"], "--no-teachers", "--no-checks", "--db", "", "--out", out,
                "--no-progress", timeout=900)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert res["provenance"]["model"]["weights_sha256"] == row["sha256"]
    assert set(res["per_sample"]["index"]) <= set(json.loads((RESULTS / f"{name}.json").read_text())
                                                   ["per_sample"]["index"])
    for metric in ("clean", "fgsm", "pgd", "cw-linf", "apgd-ce", "apgd-t"):  # `kdbench check --two-sided`, in-process
        regressed, text = check(out, RESULTS / f"{name}.json", metric, "auto", 0.01, None, True, False)
        assert not regressed and "shared points" in text, text
    r = run_cli("check", out, "--baseline", BOARD, "--metric", "pgd")
    assert r.returncode == 0 and "no regression" in r.stdout, r.stdout + r.stderr


def test_committed_board_rebuilds_from_its_store(tmp_path):
    """The board's CSV is what its committed results store gives (no re-evaluation), and every
    row's checkpoint is the stored file its sha256 names."""
    import shutil

    from kdbench.evaluation.store import ResultStore
    from kdbench.leaderboard import build_rows
    from kdbench.weights import sha256_file

    committed = read_csv(BOARD)
    shutil.copyfile(BOARD_DIR / "results.db", tmp_path / "results.db")  # read a copy: the committed file stays
    rows = build_rows(ResultStore(tmp_path / "results.db").results(), dataset="fashion-mnist")
    assert [r["name"] for r in rows] == [r["name"] for r in committed]
    for new, old in zip(rows, committed):
        for k, v in new.items():
            if k != "checkpoint":
                assert str("" if v is None else v) == old[k], (old["name"], k)
        assert old["checkpoint"] == f"leaderboards/checkpoints/{old['sha256']}.safetensors"
    for old in committed[:3]:
        assert sha256_file(ROOT / old["checkpoint"]) == old["sha256"]
