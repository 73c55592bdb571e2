"""``kdbench evaluate``: the CLI over :func:`kdbench.evaluation.pipeline.evaluate` (and its report)."""
from __future__ import annotations

from pathlib import Path

from .. import smoke
from ..errors import KdbenchError
from .argtypes import budget

ASSETS = Path(__file__).resolve().parents[1] / "assets"
DEFAULT_WEIGHTS = ASSETS / "digits-smallcnn-pgdat.safetensors"
DEFAULT_MODEL, DEFAULT_DATASET = "smallcnn", "digits"
# the no-argument default's points: under 60 CPU-seconds on 2 cores with the quick suite, checks and
# probe (benchmarks/readme_times.py); --n 500 evaluates every digits test point
DEFAULT_N = 250


def add_evaluate(sub):
    p = sub.add_parser("evaluate", help="evaluate a model's robustness (no arguments: the embedded default)",
                       description="Clean and robust accuracy under library attacks, with intervals and "
                                   "provenance.  With no arguments: kdbench's embedded PGD-AT digits model on "
                                   f"{DEFAULT_N} test points, quick suite.")
    p.add_argument("--model", help="run dir, ARCH (with --weights), file.py:factory, module:factory, "
                                   "robustbench:NAME")
    p.add_argument("--weights", help="weights file (.safetensors, or a plain state_dict .pt)")
    p.add_argument("--random-weights", action="store_true",
                   help="evaluate an architecture name without --weights (its random initialisation)")
    p.add_argument("--dataset", help="dataset name, npz:PATH or folder:PATH (default: the run's)")
    p.add_argument("--data-dir")
    p.add_argument("--n", "--num-points", dest="n", type=int,
                   help="evaluate a seeded subset of N test points (--num-points under torchrun, whose own "
                        "parser takes --n for --nnodes)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--attacks", help="comma-separated attack specs NAME[@BACKEND][:k=v;...] (use ';' between "
                                     "parameters inside a list)")
    g.add_argument("--suite", help="fast, quick, standard or paper (docs/evaluate.md; default quick)")
    p.add_argument("--eps", type=budget, help="budget, a number or a fraction such as 8/255 (default: the "
                                              "dataset's for --norm, docs/guide.md)")
    p.add_argument("--norm", default="Linf", choices=["Linf", "L2"], help="threat model of --eps (pixel units in [0, 1])")
    p.add_argument("--batch-size", type=int, default=256, help="images per attack batch")
    p.add_argument("--chunk-size", type=int, default=1024, help="points per resume/shard unit")
    p.add_argument("--seed", type=int, default=0, help="attack seed")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    p.add_argument("--cascade", action="store_true", help="attack only points still robust (same worst case)")
    p.add_argument("--channels-last", action="store_true", help="channels-last memory layout (fast on CUDA); "
                                                                "attacks always run in fp32")
    p.add_argument("--out", help="write the result JSON here")
    p.add_argument("--db", default="kdbench.db", help="SQLite results store (default ./kdbench.db; '' for none)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted evaluation from --db")
    p.add_argument("--no-checks", action="store_true", help="skip the eps-sweep / convergence validity checks")
    p.add_argument("--checks-share", type=float, default=0.1,
                   help="model passes the validity checks and the gradient probe may spend, as a share of the "
                        "attacks' (docs/evaluate.md)")
    p.add_argument("--no-sensitivity", action="store_true",
                   help="skip the gradient probe (sensitivity, confidence, gradient-based validity flags)")
    p.add_argument("--teacher", action="append", dest="teachers", metavar="SPEC",
                   help="teacher model (repeat): adds the distillation metrics (agreement, transferability, "
                        "transfer attack, CAM similarity, k-NN); default for a run dir: its teachers")
    p.add_argument("--no-teachers", action="store_true", help="skip the distillation metrics of a run's teachers")
    p.add_argument("--knn-reference", type=int, default=5000, help="training images for the k-NN metric (0: none)")
    p.add_argument("--tsne", metavar="PNG", help="with teachers: write a t-SNE plot of clean and PGD-20 embeddings")
    p.add_argument("--force", action="store_true",
                   help="evaluate a budget beyond the input space's diameter (L-inf eps > 1, L2 eps > sqrt(d))")
    p.add_argument("--trust-code", action="store_true",
                   help="allow a run directory's config to name code to import (file.py:factory teachers)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_evaluate)


def _is_arch(spec: str) -> bool:
    """A registered architecture name (not a run dir, file.py:factory or robustbench:NAME)."""
    from ..models import MODELS
    from ..rundir import is_run_dir

    return not is_run_dir(spec) and ":" not in spec and spec in MODELS


def split_attacks(text: str):
    """``pgd:steps=20;step_size=0.01,fgsm`` -> ['pgd:steps=20,step_size=0.01', 'fgsm'].  A list
    item that is a bare ``key=value`` is a parameter written after a comma: refused, saying what
    to write instead."""
    items = [a.strip() for a in text.split(",") if a.strip()]
    for i, a in enumerate(items):
        if "=" in a and ":" not in a.split("=", 1)[0]:
            prev = items[i - 1] if i else "NAME:..."
            raise KdbenchError(f"--attacks {text!r}: {a!r} is not an attack; separate the parameters of one attack "
                               f"with ';' (write {prev + ';' + a!r})")
    return [a.replace(";", ",") for a in items]


def cmd_evaluate(args) -> int:
    from ..data import get_dataset
    from ..evaluation.pipeline import StoreWriteError, evaluate
    from ..fsutil import check_writable_file, clean_stale
    from ..evaluation.report import print_table
    from ..evaluation.store import ResultStore
    from ..rundir import is_run_dir, read_run_config, run_refs
    from ..specs import require_present, require_trusted, resolve_model

    model_spec, weights, dataset = args.model, args.weights, args.dataset
    if model_spec is None:
        if weights:
            raise KdbenchError("--weights needs --model ARCH")
        model_spec, weights = DEFAULT_MODEL, str(DEFAULT_WEIGHTS)
        dataset = dataset or DEFAULT_DATASET
        if args.n is None and dataset == DEFAULT_DATASET:
            args.n = DEFAULT_N
    require_present(model_spec)
    if args.model is not None and weights is None and not args.random_weights and _is_arch(model_spec):
        raise KdbenchError(f"--model {model_spec} is an architecture without --weights: its weights would be "
                           "random; give --weights FILE, or --random-weights to evaluate it untrained")
    if dataset is None and is_run_dir(model_spec):
        dataset = read_run_config(model_spec)["dataset"]
    if dataset is None:
        raise KdbenchError("--dataset is required for this model")
    if args.eps is not None and not args.eps > 0:
        raise KdbenchError(f"--eps must be positive, got {args.eps}")
    if not args.checks_share >= 0:
        raise KdbenchError(f"--checks-share must be a share >= 0, got {args.checks_share}")
    if args.batch_size <= 0:
        raise KdbenchError(f"--batch-size must be positive, got {args.batch_size}")
    attacks = split_attacks(args.attacks) if args.attacks else None
    out = check_writable_file(args.out) if args.out else None  # before any work, not after it
    if out is not None:
        clean_stale(out.parent)
    if args.tsne:
        check_writable_file(args.tsne, "--tsne")
    store = ResultStore(args.db) if args.db else None  # a foreign, corrupted or read-only store: refused now
    ds = get_dataset(dataset, args.data_dir)
    info = ds.info
    lm = resolve_model(model_spec, info.num_classes, info.in_channels, info.input_size, weights=weights)
    teacher_specs = teacher_names = args.teachers
    if teacher_specs is None and is_run_dir(model_spec) and not args.no_teachers:
        teacher_names = read_run_config(model_spec).get("teachers") or None  # as the run records them
        for spec in teacher_names or []:
            require_trusted(spec, f"{Path(model_spec) / 'config.yaml'} (its teachers)", args.trust_code)
        teacher_specs = run_refs(model_spec)[0] or None  # found from wherever the run is now
    teachers = []
    for spec in (teacher_specs or []) if not args.no_teachers else []:
        teachers.append(resolve_model(spec, info.num_classes, info.in_channels, info.input_size).model)
    if args.tsne and not teachers:
        raise KdbenchError("--tsne needs a teacher (--teacher SPEC, or a run directory with teachers)")
    caps = smoke.announce("evaluate")
    kwargs = dict(dataset=ds, n=smoke.cap("n", args.n), attacks=attacks, suite=args.suite, eps=args.eps, norm=args.norm,
                   batch_size=args.batch_size, device=args.device, seed=args.seed, cascade=args.cascade,
                   chunk_size=args.chunk_size, store=store, resume=args.resume, progress=not args.no_progress,
                   provenance={"model": lm.provenance()}, checks=not args.no_checks, checks_share=args.checks_share,
                   sensitivity=not args.no_sensitivity,
                   channels_last=args.channels_last, teachers=teachers, teacher_names=teacher_names,
                   knn_reference=smoke.cap("knn_reference", args.knn_reference), tsne=args.tsne, force=args.force)
    if caps:
        kwargs["provenance"]["smoke"] = caps
    try:
        res = evaluate(lm.model, **kwargs)
    except StoreWriteError as e:  # computed but not stored: keep it, then fail in one line
        print_table(e.result)
        if out is not None:
            e.result.save(out)
        raise
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_rank() != 0:
        return 0
    print_table(res)  # first: a failing --out (a full disk) loses nothing the table shows
    if out is not None:
        res.save(out)
    return 0
