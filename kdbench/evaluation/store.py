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

from ..errors import KdbenchError
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
"""


class ResultStore:
    def __init__(self, path):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(str(self.path), timeout=60)
            self.db.executescript(SCHEMA)
        except sqlite3.DatabaseError as e:
            raise KdbenchError(f"results store {self.path}: {e}") from None
        except OSError as e:
            raise KdbenchError(f"results store {self.path}: {e.strerror}") from None

    def get_partial(self, key: str, attack: str, chunk: int) -> Optional[dict]:
        row = self.db.execute("SELECT robust, forward, backward, seconds, distances FROM partial WHERE key=? AND "
                              "attack=? AND chunk=?", (key, attack, chunk)).fetchone()
        if row is None:
            return None
        return {"robust": json.loads(row[0]), "forward": row[1], "backward": row[2], "seconds": row[3],
                "distances": json.loads(row[4]) if row[4] else None}

    def put_partial(self, key: str, attack: str, chunk: int, robust: List[bool], forward: int, backward: int,
                    seconds: float, distances: Optional[List[float]] = None) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO partial VALUES (?,?,?,?,?,?,?,?)",
                            (key, attack, chunk, json.dumps([bool(r) for r in robust]), forward, backward, seconds,
                             json.dumps(distances) if distances is not None else None))

    def clear_partial(self, key: str) -> None:
        with self.db:
            self.db.execute("DELETE FROM partial WHERE key=?", (key,))

    def finish(self, key: str, result: EvalResult) -> int:
        r = EvalResult.coerce(result)
        model = r.provenance.model
        with self.db:
            cur = self.db.execute(
                "INSERT INTO results (key, created, model, weights_sha256, dataset, norm, eps, n, clean_accuracy, "
                "worst_case, json) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (key, datetime.now(timezone.utc).isoformat(), model.spec if model else None,
                 model.weights_sha256 if model else None, r.provenance.dataset.name, r.config.norm, r.config.eps,
                 r.n, r.clean_accuracy, r.worst_case.robust_accuracy, json.dumps(r.to_dict())))
        return cur.lastrowid  # the per-chunk rows stay: a later suite on the same points reuses them

    def results(self) -> List[EvalResult]:
        return [EvalResult.from_dict(json.loads(r[0])) for r in self.db.execute("SELECT json FROM results ORDER BY id")]

    def close(self) -> None:
        self.db.close()
