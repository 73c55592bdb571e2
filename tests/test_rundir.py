"""Committed runs: a manifest (config, metrics, best.sha256) plus one content-addressed store of
weights; restoring checks the weights against their name."""
import pytest

from kdbench.errors import KdbenchError
from kdbench.rundir import WEIGHTS_POINTER, restore_run, save_run, stored_weights
from kdbench.weights import sha256_file


def test_save_and_restore_round_trip(digits_teacher, tmp_path):
    store, manifest = tmp_path / "store", tmp_path / "board" / "runs" / "teacher"
    sha = save_run(digits_teacher, manifest, store)
    assert sha == sha256_file(digits_teacher / "best.safetensors")
    assert sorted(p.name for p in manifest.iterdir()) == ["best.sha256", "config.yaml", "metrics.jsonl"]
    assert stored_weights(store, sha).is_file()
    assert save_run(digits_teacher, tmp_path / "other", store) == sha  # stored once, shared
    assert len(list(store.iterdir())) == 1
    out = restore_run(manifest, store, tmp_path / "restored")
    assert sha256_file(out / "best.safetensors") == sha
    assert (out / "config.yaml").read_text() == (digits_teacher / "config.yaml").read_text()


def test_restore_refuses_a_tampered_or_missing_checkpoint(digits_teacher, tmp_path):
    store, manifest = tmp_path / "store", tmp_path / "m"
    sha = save_run(digits_teacher, manifest, store)
    stored_weights(store, sha).write_bytes(b"not the weights")
    with pytest.raises(KdbenchError, match="does not match its name"):
        restore_run(manifest, store, tmp_path / "r")
    stored_weights(store, sha).unlink()
    with pytest.raises(KdbenchError, match="not in the checkpoint store"):
        restore_run(manifest, store, tmp_path / "r")
    (manifest / WEIGHTS_POINTER).unlink()
    with pytest.raises(KdbenchError, match="not a committed run"):
        restore_run(manifest, store, tmp_path / "r")


def test_a_runs_row_is_recorded_when_named_and_the_old_record_stays_otherwise(tmp_path):
    """``kdbench train --name ard`` records the row explicitly; without it the record (and so every
    store key of the committed runs) is what it was, the row its name less its own seed."""
    import yaml

    from kdbench.evaluation.result import RunInfo
    from kdbench.rundir import run_summary

    base = {"method": "ard", "model": "smallcnn", "seed": 2, "epochs": 1, "dataset_info": {}}
    d = tmp_path / "ard-s2"
    d.mkdir()
    (d / "config.yaml").write_text(yaml.safe_dump(base))
    plain = run_summary(d, base)
    named = run_summary(d, {**base, "name": "ard-kd"})
    assert "row" not in plain and RunInfo(**plain).row_name == "ard"
    assert named["row"] == "ard-kd" and RunInfo(**named).row_name == "ard-kd"
    assert named["config_sha256"] == plain["config_sha256"]  # a label, not training config
