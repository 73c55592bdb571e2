"""``kdbench leaderboard``: standardized tables from the results store (CSV, markdown, JSON).

Rows are models grouped by *run name* (the row a run directory records, its name less the seed;
the model spec otherwise), dataset, threat model and eps.  Results are read as typed
:class:`~kdbench.evaluation.result.EvalResult` records (JSON mappings are accepted and read the
same way).  For each row the *primary*
result is the one with the most attacks (ties: the lowest training seed, then the newest):
its clean, FGSM, PGD-20, CW-inf and AutoAttack accuracies with 95 % Wilson intervals, W-Robust
= (clean + AutoAttack-or-worst-case) / 2 (seed 001), validity flags and provenance.  Over the
training seeds (one result each, the largest suite), the mean and a 95 % t-interval of clean,
PGD-20 and the *quick* worst case (the per-sample AND of the quick suite's attacks, computable
from every suite that contains them), each on the test points all the seeds' evaluations share
(``seed_points`` of them), and a two-sided exact Mann-Whitney U test of each row's
per-seed quick worst case against the next row down (seed 001 does the same).
Rows are sorted by AutoAttack robust accuracy (the suite's worst case when AutoAttack was not run).
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Dict, List, Optional

import yaml

from .config import number
from .errors import KdbenchError
from .fsutil import atomic_write, check_writable_file, confined
from .attacks.registry import entries
from .attacks.suites import SUITES
from .evaluation.result import EvalResult, ModelProvenance, RunInfo

# (column, attack) from the registry's entries: fgsm, pgd20, cw_inf, autoattack
ATTACK_COLUMNS = [(e.column, e.name) for e in entries() if e.column]
QUICK = SUITES["quick"]


def row_name(result) -> str:
    """The leaderboard row of a result: its run's recorded row (a run's seeds share it); else
    the model by content -- ``METHOD-ARCH@SHA8`` when its weights file names the method it was
    trained with, ``SPEC@SHA8`` otherwise (SHA8: the weights file's sha256, else that of the
    parameters evaluated) -- so two models with one architecture name are never merged."""
    r = EvalResult.coerce(result)
    if r.run is not None:
        return r.run.row_name
    m = r.provenance.model or ModelProvenance()
    base = f"{m.method}-{m.arch or m.spec}" if m.method else (m.spec or "model")
    sha = m.weights_sha256 or m.content_sha256
    return f"{base}@{sha[:8]}" if sha else base


def _seed(result: EvalResult) -> int:
    return int(result.run.seed or 0) if result.run is not None else 0


def _keep(result: EvalResult, points: Optional[set]) -> Optional[List[bool]]:
    """Which of the result's per-sample entries are test points in ``points`` (None: all of them)."""
    index = result.per_sample.index
    return None if points is None or index is None else [i in points for i in index]


def _mean(flags, keep) -> Optional[float]:
    if keep is not None:
        flags = [f for f, k in zip(flags, keep) if k]
    return sum(flags) / len(flags) if flags else None


def quick_worst(result, points: Optional[set] = None) -> Optional[float]:
    """Per-sample AND over the quick suite's attacks (None if the result lacks one of them), on
    the test points in ``points`` where given."""
    result = EvalResult.coerce(result)
    robust = result.per_sample.robust
    if not all(a in robust for a in QUICK):
        return None
    return _mean([all(v) for v in zip(*(robust[a] for a in QUICK))], _keep(result, points))


def common_points(results: List[EvalResult]) -> Optional[set]:
    """The test indices every result evaluated (None when a result lacks per-sample indices).

    Seeds evaluated on different numbers of points (the board: 1 000 for seed 0, fewer for the
    others, all prefixes of one seeded permutation) are compared on the points they share, so the
    spread over seeds is the training seed's, not the test sample's."""
    sets = []
    for r in results:
        index = r.per_sample.index
        if index is None:
            return None
        sets.append(set(index))
    return set.intersection(*sets) if sets else None


def _t_interval(values: List[float]):
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None, None
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    from scipy import stats

    half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    return mean, sd, half


def mann_whitney(a: List[float], b: List[float]) -> Optional[dict]:
    """Two-sided Mann-Whitney U test (exact for small samples) of a against b."""
    if len(a) < 2 or len(b) < 2:
        return None
    from scipy import stats

    if len(set(a) | set(b)) == 1:
        return {"U": len(a) * len(b) / 2, "p": 1.0}
    r = stats.mannwhitneyu(a, b, alternative="two-sided", method="exact" if len(a) + len(b) <= 20 else "auto")
    return {"U": float(r.statistic), "p": float(r.pvalue)}


def _acc(result: EvalResult, attack: str):
    a = result.attacks.get(attack)
    if a is None:
        return None, None
    return a.robust_accuracy, a.ci95


def eps_filter(text: str):
    """An --eps filter, ``(value, tolerance)``: a number or a fraction (``8/255``), matching the
    budgets that print the same at the board's precision (4 significant digits, ``{:.4g}``):
    ``0.03137`` and ``8/255`` both match 8/255 = 0.0313725..., ``0.1`` does not match 0.12."""
    try:
        v = number(text)
    except ValueError:
        raise KdbenchError(f"--eps {text!r}: not a number or a fraction such as 8/255") from None
    if not math.isfinite(v) or v <= 0:
        raise KdbenchError(f"--eps {text!r}: a budget is a positive number")
    return v, 0.5 * 10.0 ** (math.floor(math.log10(v)) - 3)


def eps_values(results, dataset: Optional[str] = None, threat: Optional[str] = None) -> List[float]:
    """The budgets present in ``results`` (for a filter that matched nothing)."""
    out = set()
    for r in map(EvalResult.coerce, results):
        if (not dataset or r.provenance.dataset.name == dataset) and \
                (not threat or r.config.norm.lower() == threat.lower()):
            out.add(round(r.config.eps, 8))
    return sorted(out)


def build_rows(results, dataset: Optional[str] = None, threat: Optional[str] = None,
               eps: Optional[float] = None, method: Optional[str] = None, eps_tol: float = 0.0) -> List[dict]:
    """Leaderboard rows (CSV-ready dictionaries) from results (EvalResults or their JSON);
    ``eps`` keeps results within ``eps_tol`` of it (1e-6 relative at least; :func:`eps_filter`)."""
    groups: Dict[tuple, List[EvalResult]] = {}
    for r in map(EvalResult.coerce, results):
        ds = r.provenance.dataset.name
        norm, e = r.config.norm, r.config.eps
        run_method = (r.run.method if r.run else (r.provenance.model or ModelProvenance()).method) or ""
        if dataset and ds != dataset or threat and norm.lower() != threat.lower():
            continue
        if eps is not None and not (abs(e - eps) <= eps_tol or math.isclose(e, eps, rel_tol=1e-6)):
            continue
        if method and method not in run_method and method not in row_name(r):
            continue
        groups.setdefault((row_name(r), ds, norm, round(e, 8)), []).append(r)
    rows = []
    for (name, ds, norm, e), rs in groups.items():
        by_seed: Dict[int, EvalResult] = {}
        for r in rs:  # per seed: the largest suite, then the newest
            s = _seed(r)
            cur = by_seed.get(s)
            if cur is None or len(r.attacks) >= len(cur.attacks):
                by_seed[s] = r
        primary = max(by_seed.values(), key=lambda r: (len(r.attacks), -_seed(r)))
        rows.append(_row(name, ds, norm, e, primary, [by_seed[s] for s in sorted(by_seed)]))
    rows.sort(key=lambda r: -(r["autoattack"] if r["autoattack"] is not None else r["worst_case"]))
    for i, row in enumerate(rows):
        row["rank"] = i + 1
        nxt = rows[i + 1] if i + 1 < len(rows) else None
        test = mann_whitney(row["_quick_values"], nxt["_quick_values"]) if nxt else None
        row["mwu_vs_next"] = None if test is None else f"U={test['U']:g} p={test['p']:.3g} vs {nxt['name']}"
    for row in rows:
        row.pop("_quick_values")
    return rows


def _row(name, ds, norm, eps, primary: EvalResult, seeds: List[EvalResult]) -> dict:
    prov = primary.provenance
    model = prov.model or ModelProvenance()
    run = model.run
    clean = primary.clean_accuracy
    arch = model.arch or model.spec
    if run is not None and run.model_kwargs:
        arch += "(" + ",".join(f"{k}={v}" for k, v in sorted(run.model_kwargs.items())) + ")"
    row = {"rank": 0, "name": name, "method": (run.method if run else model.method) or "", "student": arch,
           "teachers": ";".join((run.teachers if run else None) or []), "dataset": ds, "threat": norm, "eps": eps,
           "n": primary.n, "seeds": len(seeds), "clean": clean, "clean_ci95": _ci(primary.clean_ci95)}
    for col, attack in ATTACK_COLUMNS:
        acc, ci = _acc(primary, attack)
        row[col], row[f"{col}_ci95"] = acc, _ci(ci)
    w = primary.worst_case
    row["worst_case"], row["worst_case_ci95"] = w.robust_accuracy, _ci(w.ci95)
    row["worst_case_attacks"] = "+".join(w.attacks)
    headline = row["autoattack"] if row["autoattack"] is not None else row["worst_case"]
    row["w_robust"] = (clean + headline) / 2
    points = common_points(seeds) if len(seeds) > 1 else None
    row["seed_points"] = len(points) if points is not None else min(r.n for r in seeds)

    def on_points(r: EvalResult, attack=None):
        flags = r.per_sample.correct_clean if attack is None else r.per_sample.robust.get(attack)
        if flags is None:  # a result without per-sample outcomes: its aggregate
            return r.clean_accuracy if attack is None else _acc(r, attack)[0]
        return _mean(flags, _keep(r, points))

    for key, fn in (("clean", lambda r: on_points(r)),
                    ("pgd20", lambda r: on_points(r, "pgd")),
                    ("quick_worst", lambda r: quick_worst(r, points))):
        vals = [v for v in (fn(r) for r in seeds) if v is not None]
        if vals:
            mean, sd, half = _t_interval(vals)
            row[f"{key}_seed_mean"], row[f"{key}_seed_sd"] = mean, sd
            # accuracies: the t interval clipped to [0, 1]
            row[f"{key}_seed_ci95"] = None if half is None else _ci([max(0.0, mean - half), min(1.0, mean + half)])
        else:
            row[f"{key}_seed_mean"] = row[f"{key}_seed_sd"] = row[f"{key}_seed_ci95"] = None
    row["_quick_values"] = [v for v in (quick_worst(r, points) for r in seeds) if v is not None]
    row["flags"] = ";".join(sorted(primary.validity.names))
    r = run or RunInfo(name)
    row.update({"epochs": r.epochs_done, "train_images": r.train_size,
                "student_forward_images": r.student_forward_images,
                "teacher_forward_images": r.teacher_forward_images,
                "train_hours": None if run is None else round(run.train_seconds / 3600, 4),
                "train_device": r.device, "eval_device": prov.device,
                **_eval_cost(primary),
                "commit": prov.git_commit, "config_sha256": r.config_sha256,
                "checkpoint": model.weights, "sha256": model.weights_sha256,
                "eval_seed": prov.seed, "subset_hash": prov.dataset.subset_hash,
                "result_key": prov.key})
    return row


def _eval_cost(r: EvalResult) -> dict:
    """The primary evaluation's attack cost: model passes (forward + backward images) and seconds
    (results written before ``cost`` existed: the sum over their attacks, ensembles excluded)."""
    if r.cost is not None:
        return {"eval_passes": r.cost.passes, "eval_seconds": round(r.cost.seconds, 1)}
    own = [a for a in r.attacks.values() if a.best_of is None]
    return {"eval_passes": sum(a.passes.forward + a.passes.backward for a in own),
            "eval_seconds": round(sum(a.seconds for a in own), 1)}


def _ci(ci):
    return None if ci is None else f"{ci[0]:.4f}-{ci[1]:.4f}"


def _pct(v, ci=None):
    if v is None:
        return "–"
    s = f"{100 * v:.2f}"
    if ci:
        lo, hi = (float(x) for x in ci.split("-"))
        s += f" [{100 * lo:.1f}, {100 * hi:.1f}]"
    return s


def _seed_cell(row, key):
    m, sd = row.get(f"{key}_seed_mean"), row.get(f"{key}_seed_sd")
    if m is None:
        return "–"
    return f"{100 * m:.2f} ± {100 * sd:.2f}" if sd is not None else f"{100 * m:.2f}"


MD_COLUMNS = [("#", lambda r: str(r["rank"])), ("model", lambda r: r["name"]), ("method", lambda r: r["method"]),
              ("student", lambda r: r["student"]), ("teachers", lambda r: str(len(r["teachers"].split(";")))
                                                    if r["teachers"] else "–"),
              ("clean", lambda r: _pct(r["clean"], r["clean_ci95"])),
              ("FGSM", lambda r: _pct(r["fgsm"], r["fgsm_ci95"])),
              ("PGD-20", lambda r: _pct(r["pgd20"], r["pgd20_ci95"])),
              ("CW-inf", lambda r: _pct(r["cw_inf"], r["cw_inf_ci95"])),
              ("AutoAttack", lambda r: _pct(r["autoattack"], r["autoattack_ci95"])),
              ("W-Robust", lambda r: _pct(r["w_robust"])),
              ("seeds: clean", lambda r: _seed_cell(r, "clean")),
              ("seeds: quick worst", lambda r: _seed_cell(r, "quick_worst")),
              ("MWU vs next", lambda r: (r["mwu_vs_next"] or "–").split(" vs ")[0]),
              ("flags", lambda r: r["flags"] or "–"), ("n", lambda r: str(r["n"])),
              ("eval passes (M)", lambda r: f"{r['eval_passes'] / 1e6:.2f}"),
              ("eval s", lambda r: f"{r['eval_seconds']:.0f}")]


def to_markdown(rows: List[dict], title: str = "") -> str:
    lines = [f"# {title}", ""] if title else []
    if rows:
        r0 = rows[0]
        lines += [f"Dataset {r0['dataset']}, {r0['threat']} eps = {r0['eps']:.4g}; accuracies in % with 95 % Wilson "
                  "intervals on the primary (first-seed, largest-suite) evaluation; seed columns: mean ± standard "
                  "deviation over training seeds, on the test points every seed was evaluated on; MWU: two-sided Mann-Whitney U of the per-seed quick-suite worst case "
                  "against the next row.", ""]
    lines.append("| " + " | ".join(c for c, _ in MD_COLUMNS) + " |")
    lines.append("|" + "|".join("---" for _ in MD_COLUMNS) + "|")
    for r in rows:
        lines.append("| " + " | ".join(f(r) for _, f in MD_COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def to_robustbench(row: dict) -> dict:
    """A RobustBench-style model-info entry (model_info/<dataset>/<threat>/<name>.json fields)."""
    return {"name": row["name"], "link": "", "authors": "", "additional_data": False, "number_forward_passes": 1,
            "dataset": row["dataset"], "venue": "kdbench", "architecture": row["student"], "eps": f"{row['eps']:.6g}",
            "clean_acc": f"{100 * row['clean']:.2f}",
            "reported": "", "autoattack_acc": "" if row["autoattack"] is None else f"{100 * row['autoattack']:.2f}",
            "footnote": f"kdbench {row['method']} distilled from {row['teachers'] or 'no teacher'}",
            "unreliable": bool(row["flags"]), "kdbench": row}


def write(rows: List[dict], out_prefix, title: str = "") -> List[Path]:
    out = Path(out_prefix)
    paths = [out.with_suffix(".csv"), out.with_suffix(".md"), out.with_suffix(".json")]
    fields = list(rows[0].keys()) if rows else ["rank", "name"]
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if v is None else v) for k, v in r.items()})
    texts = [buf.getvalue(), to_markdown(rows, title), json.dumps([to_robustbench(r) for r in rows], indent=1)]
    for path in paths:  # all three checked before any is written
        check_writable_file(path, "--out")
    for path, text in zip(paths, texts):  # each atomically: a failure leaves the old table whole
        atomic_write(path, lambda p, text=text: Path(p).write_text(text, newline=""))
    return paths


def read_csv(path) -> List[dict]:
    """A leaderboard CSV, checked: the columns a row is compared by are present and numeric."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise KdbenchError(f"{path}: {e.strerror}") from None
    except (csv.Error, UnicodeDecodeError) as e:
        raise KdbenchError(f"{path}: not a readable CSV ({type(e).__name__})") from None
    if not rows:
        raise KdbenchError(f"{path}: leaderboard CSV has no rows")
    missing = [c for c in ("name", "dataset", "threat", "eps", "n") if c not in rows[0]]
    if missing:
        raise KdbenchError(f"{path}: not a kdbench leaderboard CSV (no {', '.join(missing)} column)")
    for i, r in enumerate(rows, 2):
        for c in ("eps", "n", "clean", "worst_case", "autoattack"):
            v = r.get(c)
            try:
                ok = v in (None, "") and c not in ("eps", "n") or math.isfinite(float(v))
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise KdbenchError(f"{path} line {i}: column {c} is {v!r}, not a number")
    return rows


def print_rows(rows: List[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="kdbench leaderboard")
    name_width = max((len(r["name"]) for r in rows), default=None)
    for c, _ in MD_COLUMNS:  # the model's name is never cut: it is the row's identity
        model = c == "model"
        t.add_column(c, justify="left" if c in ("model", "method", "student", "flags") else "right",
                     no_wrap=model, min_width=name_width if model else None)
    for r in rows:
        t.add_row(*(f(r) for _, f in MD_COLUMNS))
    Console(width=max(Console().width, 200)).print(t)


def export_checkpoints(rows: List[dict], dest, max_bytes: int = 1 << 20, store=None) -> List[Path]:
    """Copy each row's checkpoint (with its run config and metrics) into ``dest/<run dir>/`` when under
    ``max_bytes``, so the committed numbers can be re-checked; updates the rows' paths.  With
    ``store``, ``dest/<run dir>/`` is a manifest and the weights go to the content-addressed store
    (:func:`kdbench.rundir.save_run`); the row's checkpoint is then the stored file."""
    import shutil

    from .rundir import save_run, stored_weights

    dest = Path(dest)
    out = []
    for r in rows:
        ck = r.get("checkpoint")
        if not ck or not Path(ck).is_file() or Path(ck).stat().st_size > max_bytes:
            continue
        run = Path(ck).parent
        verify_copyable(run, Path(ck), r.get("sha256"))  # only files kdbench wrote or checked leave the run
        d = confined(dest, *_run_path(run).parts, what="run directory")
        if store is not None:
            r["checkpoint"] = str(stored_weights(store, save_run(run, d, store, weights=ck)))
            out.append(d)
            continue
        d.mkdir(parents=True, exist_ok=True)
        for src, name in [(Path(ck), "best.safetensors"), (run / "config.yaml", "config.yaml"),
                          (run / "metrics.jsonl", "metrics.jsonl")]:
            if src.is_file() and src.resolve() != (d / name).resolve():
                atomic_write(d / name, lambda p, src=src: shutil.copyfile(src, p))
        r["checkpoint"] = str(d / "best.safetensors")
        out.append(d)
    return out


def verify_copyable(run: Path, ck: Path, sha256: Optional[str]) -> None:
    """A row's files, checked before a board copies them: no symbolic links, the checkpoint a
    safetensors file (header parsed) whose sha256 is the one its result records, the config a
    kdbench run config and every metrics line JSON."""
    from safetensors import safe_open

    from .rundir import read_run_config
    from .weights import sha256_file

    for p in (ck, run / "config.yaml", run / "metrics.jsonl"):
        if p.is_symlink():
            raise KdbenchError(f"{p}: a symbolic link; a board copies only files it can verify")
    try:
        with safe_open(str(ck), framework="pt"):
            pass
    except Exception as e:
        raise KdbenchError(f"{ck}: not a valid safetensors file ({' '.join(str(e).split())[:100]})") from None
    if sha256 and sha256_file(ck) != sha256:
        raise KdbenchError(f"{ck}: its sha256 differs from the one its result records (changed since it was "
                           "evaluated)")
    if (run / "config.yaml").is_file():
        read_run_config(run)
    if (run / "metrics.jsonl").is_file():
        for i, line in enumerate((run / "metrics.jsonl").read_text().splitlines(), 1):
            try:
                if line.strip():
                    json.loads(line)
            except ValueError:
                raise KdbenchError(f"{run / 'metrics.jsonl'} line {i}: not JSON") from None


def _run_path(run_dir: Path) -> Path:
    """A run directory's name (seed suffix kept); ``root/role`` for a link of a teacher-assistant chain.
    Both parts come from data: the caller confines them (:func:`kdbench.fsutil.confined`)."""
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) if (run_dir / "config.yaml").is_file() else None
    chain = (cfg or {}).get("chain") or {} if isinstance(cfg, dict) else {}
    if chain.get("root") and chain.get("role"):
        return Path(Path(str(chain["root"])).name) / str(chain["role"]).replace("/", "_")
    return Path(run_dir.name)


def _headline(row: dict) -> float:
    return row["autoattack"] if row["autoattack"] is not None else row["worst_case"]


def pareto_front(points):
    """Indices of the points (clean, robust) no other point beats on both (ties kept)."""
    return [i for i, (c, r) in enumerate(points)
            if not any((c2 >= c and r2 >= r) and (c2 > c or r2 > r) for c2, r2 in points)]


def plot(rows: List[dict], out_dir) -> List[Path]:
    """``pareto.png``: clean against robust accuracy (AutoAttack, else the worst case) per row with
    the Pareto front; ``student_vs_teacher.png``: each distilled row's robust accuracy against its
    teachers' (mean over teachers that have rows on the same board)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pts = [(r["clean"], _headline(r)) for r in rows]
    front = pareto_front(pts)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=18)
    for r, (c, rob) in zip(rows, pts):
        ax.annotate(r["name"], (c, rob), fontsize=6, xytext=(3, 2), textcoords="offset points")
    fp = sorted(pts[i] for i in front)
    ax.plot([p[0] for p in fp], [p[1] for p in fp], "r--", lw=1, label="Pareto front")
    ax.set_xlabel("clean accuracy")
    ax.set_ylabel("robust accuracy (AutoAttack, else worst case)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths = [out / "pareto.png"]
    fig.savefig(paths[0], dpi=130)
    plt.close(fig)
    by_name = {r["name"]: r for r in rows}
    pairs = []
    for r in rows:
        ts = [by_name.get(Path(t).name) for t in r["teachers"].split(";") if t]
        ts = [t for t in ts if t is not None]
        if ts:
            pairs.append((r["name"], sum(_headline(t) for t in ts) / len(ts), _headline(r)))
    if pairs:
        fig, ax = plt.subplots(figsize=(5, 4.5))
        ax.scatter([p[1] for p in pairs], [p[2] for p in pairs], s=18)
        for name, t, s in pairs:
            ax.annotate(name, (t, s), fontsize=6, xytext=(3, 2), textcoords="offset points")
        lo = min(min(p[1] for p in pairs), min(p[2] for p in pairs))
        hi = max(max(p[1] for p in pairs), max(p[2] for p in pairs))
        ax.plot([lo, hi], [lo, hi], "k:", lw=1, label="student = teacher")
        ax.set_xlabel("teacher robust accuracy (mean over its teachers)")
        ax.set_ylabel("student robust accuracy")
        ax.legend(fontsize=7)
        fig.tight_layout()
        paths.append(out / "student_vs_teacher.png")
        fig.savefig(paths[-1], dpi=130)
        plt.close(fig)
    return paths
