"""The ``kdbench`` command line: ``train``, ``evaluate``, ``list``, ``plot``, ``leaderboard``, ``check``.

Bad input prints one line (``kdbench: error: ...``) and exits with status 2, no traceback.
"""
from __future__ import annotations

import argparse
import sqlite3
import sys
from pathlib import Path
from typing import List, Optional

from .. import smoke
from ..errors import KdbenchError
from .argtypes import budget


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _Help)
        super().__init__(*args, **kwargs)

    def error(self, message):  # one line, exit 2 (argparse's code), no usage dump
        raise KdbenchError(f"{message} (see '{self.prog} --help')")


class _Help(argparse.HelpFormatter):
    """--help names each option's default where it has one (not None / off)."""

    def _get_help_string(self, action):
        h = action.help or ""
        if "%(default)" in h or "default" in h or action.default in (None, False, argparse.SUPPRESS, []):
            return h
        return f"{h} (default: %(default)s)" if h else "default: %(default)s"


def _add_train(sub):
    p = sub.add_parser("train", help="train a model with a method (natural, pgd-at, trades, ...)",
                       description="Train with one of kdbench's methods into a run directory.")
    p.add_argument("--method", help="method id (kdbench list methods)")
    p.add_argument("--dataset", help="dataset name, npz:PATH or folder:PATH")
    p.add_argument("--model", help="student architecture (default: the dataset's)")
    p.add_argument("--teacher", action="append", dest="teachers", metavar="RUN_DIR|SPEC",
                   help="teacher model (repeat for several)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--eps", type=budget, help="training L-inf budget, a number or a fraction such as 8/255 "
                                              "(default: the dataset's, docs/guide.md)")
    p.add_argument("--train-subset", type=int, help="train on a seeded subset of N images")
    p.add_argument("--config", help="YAML config; flags override it")
    p.add_argument("--seed", type=int)
    p.add_argument("--name", help="the run's row on leaderboards, shared by its seeds (default: the --out "
                                  "directory's name less a -s<seed> suffix)")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--data-dir")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set method_params.beta=3 (YAML value)")
    p.add_argument("--init-from", help="initialise the student from a run dir or weights file")
    p.add_argument("--chain", type=int, help="teacher-assistant chain of K links (method takd): "
                                             "OUT/teacher, OUT/assistant..., OUT/student")
    p.add_argument("--chain-models", help="comma-separated architectures along the chain")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue the run in --out (with its own config; "
                                                         "--epochs may extend it)")
    p.add_argument("--trust-code", action="store_true",
                   help="with --resume: allow the run's config to name code to import (file.py:factory teachers)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_train)


_RESUME_FREE = ("epochs", "device", "data_dir")  # what --resume may change: a longer run, another device


def _resume_conflicts(out, over: dict, config_given: bool) -> None:
    """--resume continues the run's own config: an option or --set that says otherwise is refused."""
    from ..rundir import is_run_dir, read_run_config

    if not is_run_dir(out):
        return
    if config_given:
        raise KdbenchError("--resume continues the run with its own config: drop --config")
    saved = read_run_config(out)
    for key, value in over.items():
        if value is None or key in _RESUME_FREE:
            continue
        node = saved
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node != value:  # 3 == 3.0: numbers compare by value
            raise KdbenchError(f"--resume continues the run's own config: its {key} is {node!r}, not {value!r}; "
                               "drop the option, or train into another --out")


def cmd_train(args) -> int:
    import yaml

    from ..config import TrainConfig, load_config, merge
    from ..training.engine import train

    cfg = load_config(args.config) if args.config else TrainConfig()
    over = {"method": args.method, "dataset": args.dataset, "model": args.model, "teachers": args.teachers,
            "epochs": args.epochs, "batch_size": args.batch_size, "optimizer.lr": args.lr, "attack.eps": args.eps,
            "train_subset": args.train_subset, "seed": args.seed, "name": args.name, "device": args.device,
            "data_dir": args.data_dir, "init_from": args.init_from}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise KdbenchError(f"--set expects KEY=VALUE, got {item!r}")
        if over.get(key.strip()) is not None:  # e.g. --teacher X with --set teachers=[]: which one was meant?
            raise KdbenchError(f"{key.strip()} is given twice, by an option and by --set: give one")
        try:
            over[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise KdbenchError(f"--set {key.strip()}: not a YAML value ({type(e).__name__})") from None
    if not args.resume and not (args.method or args.config):
        raise KdbenchError("--method is required (or --config)")
    cfg = merge(cfg, over)  # type-checks every option and --set against the typed config
    if smoke.announce("train"):
        cfg = merge(cfg, {"epochs": smoke.cap("epochs", cfg.epochs), "eval.n": smoke.cap("monitor_n", cfg.eval.n),
                          "train_subset": smoke.cap("train_subset", cfg.train_subset)})
    if args.resume and args.chain is None:
        _resume_conflicts(args.out, over, bool(args.config))
    if args.chain is not None:
        from ..training.chain import train_chain

        if cfg.method not in ("takd", "ta"):
            raise KdbenchError("--chain builds teacher-assistant chains: use --method takd")
        models = [m.strip() for m in args.chain_models.split(",")] if args.chain_models else None
        dirs = train_chain(cfg, args.out, args.chain, models, resume=args.resume, progress=not args.no_progress)
        print("chain: " + " -> ".join(str(d) for d in dirs))
        return 0
    history = train(cfg, args.out, resume=args.resume, progress=not args.no_progress, trust_code=args.trust_code)
    if history:
        last = history[-1]
        ev = f", clean {last['clean_acc']:.4f}" if "clean_acc" in last else ""
        ev += f", pgd {last['pgd_acc']:.4f}" if "pgd_acc" in last else ""
        method = cfg.method
        if args.resume:  # the run's own config, not the command line's defaults
            method = (yaml.safe_load((Path(args.out) / "config.yaml").read_text()) or {}).get("method", method)
        print(f"trained {method or 'run'} -> {args.out} (epoch {last['epoch']}{ev})")
    return 0


def _add_list(sub):
    p = sub.add_parser("list", help="list registered datasets, models, methods, attacks and suites")
    p.add_argument("what", choices=["datasets", "models", "methods", "attacks", "suites", "all"], nargs="?",
                   default="all")
    p.set_defaults(func=cmd_list)


def cmd_list(args) -> int:
    from ..data import DATASETS
    from ..methods import METHODS
    from ..models import MODELS

    from ..attacks import registry
    from ..attacks.suites import SUITES

    for name, reg in (("datasets", DATASETS), ("models", MODELS), ("methods", METHODS)):
        if args.what in (name, "all"):
            print(f"{name}: {', '.join(reg.names())}")
    if args.what in ("attacks", "all"):
        print("attacks:")
        for e in registry.entries():
            kind = f"minimal {e.min_norm}" if e.min_norm else "/".join(e.norms)
            print(f"  {e.name:<12} {kind:<12} backends: {', '.join(e.backends)} (default {e.default_backend})")
    if args.what in ("suites", "all"):
        print("suites:")
        for name, specs in SUITES.items():
            print(f"  {name:<9} {', '.join(specs)}")
    return 0


def _add_plot(sub):
    p = sub.add_parser("plot", help="plots from result JSONs (robust accuracy vs eps, distances, temperature)")
    p.add_argument("results", nargs="+", help="result JSON files (kdbench evaluate --out)")
    p.add_argument("--label", action="append", help="label per result, e.g. 'student T=20' (repeat)")
    p.add_argument("--out", required=True, help="directory for the PNG files")
    p.set_defaults(func=cmd_plot)


def cmd_plot(args) -> int:
    from ..plots import plot

    for path in plot(args.results, args.out, args.label):
        print(path)
    return 0


def _add_leaderboard(sub):
    p = sub.add_parser("leaderboard", help="standardized tables (CSV, markdown, JSON) from the results store",
                       description="Build a leaderboard from the results store: one row per model (run name), "
                                   "sorted by AutoAttack robust accuracy.")
    p.add_argument("--db", default="kdbench.db", help="SQLite results store (kdbench evaluate --db)")
    p.add_argument("--dataset")
    p.add_argument("--threat", choices=["Linf", "L2"])
    p.add_argument("--eps", help="keep this budget: a fraction (8/255) or a number, matched at the board's "
                                 "printed precision (0.03137 matches 8/255)")
    p.add_argument("--method", help="keep rows whose method or name contains this")
    p.add_argument("--out", help="write OUT.csv, OUT.md and OUT.json (RobustBench-style entries)")
    p.add_argument("--title", help="markdown title")
    p.add_argument("--checkpoints",
                   help="copy each row's checkpoint (< 1 MB), config and metrics into DIR/<run dir>/")
    p.add_argument("--checkpoint-store", metavar="STORE",
                   help="with --checkpoints: DIR/<run dir>/ holds config, metrics and best.sha256, the weights "
                        "go to STORE/<sha256>.safetensors (content-addressed, shared across boards)")
    p.add_argument("--results", help="write each row's primary result JSON to DIR/<name>.json")
    p.add_argument("--plots", help="write pareto.png and student_vs_teacher.png into DIR")
    p.set_defaults(func=cmd_leaderboard)


def cmd_leaderboard(args) -> int:
    import json
    from pathlib import Path

    from .. import leaderboard as lb
    from ..evaluation.store import ResultStore

    from ..fsutil import confined, write_text

    eps, tol = lb.eps_filter(args.eps) if args.eps is not None else (None, 0.0)
    results = ResultStore(args.db, readonly=True).results()
    rows = lb.build_rows(results, dataset=args.dataset, threat=args.threat, eps=eps, method=args.method, eps_tol=tol)
    if not rows:
        present = lb.eps_values(results, args.dataset, args.threat)
        hint = f"; eps values present: {', '.join(f'{v:.6g}' for v in present)}" if eps is not None and present else ""
        raise KdbenchError(f"no results in {args.db} match the filters{hint}")
    if args.results:
        d = Path(args.results)
        d.mkdir(parents=True, exist_ok=True)
        by_key = {r.provenance.key: r for r in results}  # the newest result per key
        for row in rows:
            res = by_key.get(row["result_key"])
            if res is not None:
                write_text(confined(d, f"{row['name']}.json", what="row name"), json.dumps(res.to_dict()))
    if args.checkpoint_store and not args.checkpoints:
        raise KdbenchError("--checkpoint-store goes with --checkpoints DIR")
    if args.checkpoints:
        lb.export_checkpoints(rows, args.checkpoints, store=args.checkpoint_store)
    lb.print_rows(rows)
    if args.plots:
        for p in lb.plot(rows, args.plots):
            print(p)
    if args.out:
        title = args.title or f"kdbench leaderboard: {rows[0]['dataset']} ({rows[0]['threat']})"
        for p in lb.write(rows, args.out, title):
            print(p)
    return 0


def _add_check(sub):
    p = sub.add_parser("check", help="CI regression gate: compare a result with a baseline (exit 1 on regression)",
                       description="Exit 0 when the result does not regress against the baseline, 1 on a "
                                   "regression, 2 on bad input; prints a markdown summary.")
    p.add_argument("result", help="result JSON (kdbench evaluate --out)")
    p.add_argument("--baseline", required=True, help="baseline result JSON or leaderboard CSV")
    p.add_argument("--metric", default="worst_case", help="worst_case (default), clean, or an attack name")
    p.add_argument("--tolerance", default="auto", help="auto (a statistical test) or an allowed drop: 0.02 or 2%%")
    p.add_argument("--alpha", type=float, default=0.01, help="one-sided significance level for auto (0.01)")
    p.add_argument("--row", help="leaderboard row name (default: match the checkpoint sha256, then the run name)")
    p.add_argument("--two-sided", action="store_true", help="also fail on a significant rise (reproduction check)")
    p.add_argument("--allow-mismatch", action="store_true",
                   help="compare results of another dataset, threat model, eps or test split")
    p.set_defaults(func=cmd_check)


def cmd_check(args) -> int:
    from ..check import check

    if not 0 < args.alpha < 1:
        raise KdbenchError(f"--alpha must lie in (0, 1), got {args.alpha}")
    regressed, text = check(args.result, args.baseline, args.metric, args.tolerance, args.alpha, args.row,
                           args.two_sided, args.allow_mismatch)
    print(text)
    return 1 if regressed else 0


def build_parser() -> argparse.ArgumentParser:
    from ..version import __version__

    parser = _Parser(prog="kdbench", description="Benchmark adversarial knowledge distillation.")
    parser.add_argument("--version", action="version", version=f"kdbench {__version__}")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    _add_train(sub)
    _add_list(sub)
    _add_plot(sub)
    _add_leaderboard(sub)
    _add_check(sub)
    try:
        from .evaluate import add_evaluate
    except ImportError:  # pragma: no cover - evaluate not installed
        add_evaluate = None
    if add_evaluate:
        add_evaluate(sub)
    return parser


def load_plugins() -> None:
    """Import the comma-separated modules of ``KDBENCH_PLUGINS`` (user methods, models, datasets
    registering themselves), looked up in the working directory first, as ``python -m`` does (the
    ``kdbench`` script's own directory is the venv's bin/), then on the usual path."""
    import os

    names = [m.strip() for m in os.environ.get("KDBENCH_PLUGINS", "").split(",") if m.strip()]
    if names:
        from ..specs import import_user_module
    for name in names:
        try:
            import_user_module(name)
        except Exception as e:
            raise KdbenchError(f"KDBENCH_PLUGINS: importing {name!r} failed: {type(e).__name__}: {str(e)[:120]}") \
                from None


def _fail(message: str) -> int:
    """``kdbench: error: MESSAGE`` on one line (whitespace runs folded), exit status 2."""
    print(f"kdbench: error: {' '.join(message.split())}", file=sys.stderr)
    return 2


def main(argv: Optional[List[str]] = None) -> int:
    try:
        load_plugins()
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        return args.func(args)
    except KdbenchError as e:
        return _fail(str(e))
    except OSError as e:  # a full disk, a read-only path, a directory where a file belongs: one line
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        return _fail(f"{where}{e.strerror or e}")
    except sqlite3.Error as e:
        return _fail(f"results store: {e}")
    except KeyboardInterrupt:
        print("kdbench: interrupted (a training run continues with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
