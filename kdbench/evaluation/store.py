"""The SQLite results store (``--db``, default ``./kdbench.db``).

``results`` holds one row per finished evaluation, written in one transaction: an interrupted
or failed run never leaves a partial result and never alters earlier rows.  ``partial`` holds
per-chunk attack outcomes keyed by the evaluation's configuration hash (model, points, eps,
seed, chunking; the attack list too under ``--cascade``) and the attack's spec and parameters,
so ``--resume`` continues where a run stopped and reuses every attack already run on the same
points (the standard suite after the quick suite runs only Square and AutoAttack's FAB-T).  A run
without ``--resume`` clears its key's rows first.
"""
from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from typing import List, Optional

from ..errors import KdbenchError, missing
from .result import EvalResult

SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    created TEXT NOT NULL,
    model TEXT, weights_sha256 TEXT, dataset TEXT, norm TEXT, eps REAL, n INTEGER,
    clean_accuracy REAL, worst_case REAL,
    json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS partial (
    key TEXT NOT NULL, attack TEXT NOT NULL, chunk INTEGER NOT NULL,
    robust TEXT NOT NULL, forward INTEGER, backward INTEGER, seconds REAL, distances TEXT,
    PRIMARY KEY (key, attack, chunk)
);
CREATE TABLE IF NOT EXISTS evaluations (
    key TEXT PRIMARY KEY, identity TEXT NOT NULL, model_sha256 TEXT, data_sha256 TEXT, created TEXT
);
"""
_COLUMNS = {"results": ["id", "key", "created", "model", "weights_sha256", "dataset", "norm", "eps", "n",
                        "clean_accuracy", "worst_case", "json"],
            "partial": ["key", "attack", "chunk", "robust", "forward", "backward", "seconds", "distances"],
            "evaluations": ["key", "identity", "model_sha256", "data_sha256", "created"]}
_HEADER = b"SQLite format 3\x00"


class ResultStore:
    """``ResultStore(path)`` opens (or creates) a store for writing; ``readonly=True`` only reads
    an existing one.  A file that is not SQLite, fails SQLite's integrity check, or holds other
    tables is refused on opening -- before any evaluation runs -- and so is a store that cannot be
    written (read-only file or directory)."""

    def __init__(self, path, readonly: bool = False):
        self.path = Path(path)
        try:
            if self.path.is_dir():
                raise KdbenchError(f"results store {self.path}: is a directory, not a file")
            if self.path.is_file() and self.path.stat().st_size:
                with open(self.path, "rb") as f:
                    if f.read(16) != _HEADER:
                        raise KdbenchError(f"results store {self.path}: not an SQLite file (a foreign file?); "
                                           "choose another --db")
            elif readonly:
                raise missing(self.path, "results store (kdbench evaluate --db writes it)")
            if readonly:
                self.db = sqlite3.connect(f"file:{self.path.resolve()}?mode=ro", uri=True, timeout=60)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.db = sqlite3.connect(str(self.path), timeout=60)
            self._check()
            if not readonly:
                self.db.executescript(SCHEMA)
                # a write now, rolled back, so a read-only store fails before the evaluation, not after
                self.db.execute("INSERT INTO evaluations (key, identity) VALUES ('', '')")
                self.db.rollback()
        except sqlite3.DatabaseError as e:
            raise KdbenchError(f"results store {self.path}: {e}") from None
        except OSError as e:
            raise KdbenchError(f"results store {self.path}: {e.strerror}") from None

    def _check(self) -> None:
        ok = self.db.execute("PRAGMA quick_check").fetchone()
        if not ok or ok[0] != "ok":
            raise KdbenchError(f"results store {self.path}: corrupted ({' '.join((ok or ['?'])[0].split())[:80]}); "
                               "restore it or choose another --db")
        tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        tables.discard("sqlite_sequence")
        foreign = tables - set(_COLUMNS)
        for t in tables & set(_COLUMNS):
            cols = [r[1] for r in self.db.execute(f"PRAGMA table_info({t})")]
            if cols != _COLUMNS[t]:
                foreign.add(t)
        if foreign:
            raise KdbenchError(f"results store {self.path}: not a kdbench store (table(s) {sorted(foreign)}); "
                               "choose another --db")

    def begin(self, key: str, identity: str, model_sha256: str, data_sha256: str, resume: bool) -> None:
        """Record an evaluation about to run.  Without ``resume`` its per-chunk rows are cleared;
        with it, an evaluation of the same spec and settings whose model or points have changed
        since (other content hashes, stored chunks) is refused."""
        with self.db:
            if resume:
                for old_key, m, d in self.db.execute(
                        "SELECT key, model_sha256, data_sha256 FROM evaluations WHERE identity=? AND key!=?",
                        (identity, key)).fetchall():
                    if self.db.execute("SELECT 1 FROM partial WHERE key=? LIMIT 1", (old_key,)).fetchone():
                        what, a, b = (("model's parameters", m, model_sha256) if m != model_sha256 else
                                      ("evaluated points", d, data_sha256))
                        raise KdbenchError(f"--resume: the {what} changed since the stored evaluation "
                                           f"({str(a)[:12]} -> {str(b)[:12]}); run without --resume to start again")
            else:
                self.db.execute("DELETE FROM partial WHERE key=?", (key,))
            self.db.execute("INSERT OR REPLACE INTO evaluations VALUES (?,?,?,?,?)",
                            (key, identity, model_sha256, data_sha256, datetime.now(timezone.utc).isoformat()))

    def get_partial(self, key: str, attack: str, chunk: int) -> Optional[dict]:
        row = self.db.execute("SELECT robust, forward, backward, seconds, distances FROM partial WHERE key=? AND "
                              "attack=? AND chunk=?", (key, attack, chunk)).fetchone()
        if row is None:
            return None
        try:
            robust = json.loads(row[0])
            dist = json.loads(row[4]) if row[4] else None
            if not isinstance(robust, list) or any(v not in (True, False, None) for v in robust):
                raise ValueError("robust")
        except ValueError:
            raise KdbenchError(f"results store {self.path}: chunk {chunk} of {attack.split('#')[0]} is "
                               "corrupted; run without --resume") from None
        # a point not evaluated is stored as null: never robust
        return {"robust": [v is True for v in robust], "not_evaluated": [v is None for v in robust],
                "forward": row[1], "backward": row[2], "seconds": row[3], "distances": dist}

    def put_partial(self, key: str, attack: str, chunk: int, robust: List[bool], forward: int, backward: int,
                    seconds: float, distances: Optional[List[float]] = None,
                    not_evaluated: Optional[List[bool]] = None) -> None:
        nev = not_evaluated or [False] * len(robust)
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO partial VALUES (?,?,?,?,?,?,?,?)",
                            (key, attack, chunk, json.dumps([None if b else bool(r) for r, b in zip(robust, nev)]),
                             forward, backward, seconds, json.dumps(distances) if distances is not None else None))

    def clear_partial(self, key: str) -> None:
        with self.db:
            self.db.execute("DELETE FROM partial WHERE key=?", (key,))

    def finish(self, key: str, result: EvalResult) -> int:
        from .validity import invariants

        r = EvalResult.coerce(result)
        invariants(r)
        model = r.provenance.model
        try:
            with self.db:
                cur = self.db.execute(
                    "INSERT INTO results (key, created, model, weights_sha256, dataset, norm, eps, n, clean_accuracy, "
                    "worst_case, json) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (key, datetime.now(timezone.utc).isoformat(), model.spec if model else None,
                     model.weights_sha256 if model else None, r.provenance.dataset.name, r.config.norm,
                     r.config.eps, r.n, r.clean_accuracy, r.worst_case.robust_accuracy, json.dumps(r.to_dict())))
        except sqlite3.Error as e:
            raise KdbenchError(f"results store {self.path}: {e}; the result was not stored") from None
        return cur.lastrowid  # the per-chunk rows stay: a later suite on the same points reuses them

    def results(self) -> List[EvalResult]:
        out = []
        for rid, text in self.db.execute("SELECT id, json FROM results ORDER BY id"):
            try:
                out.append(EvalResult.from_dict(json.loads(text)))
            except (ValueError, TypeError, KeyError, AttributeError) as e:
                raise KdbenchError(f"results store {self.path}: result {rid} is corrupted ({type(e).__name__})") \
                    from None
        return out

    def close(self) -> None:
        self.db.close()
