"""The typed result of an evaluation (docs/results.md is its JSON form).

:class:`EvalResult` and its parts are dataclasses; ``to_dict()`` gives the JSON schema (version
1) key for key, and ``from_dict()`` reads it back (results written by earlier kdbench versions
included), so the store, leaderboards, ``kdbench check``, plots and the table printer read
attributes (``res.worst_case.robust_accuracy``, ``res.provenance.model.run.seed``) instead of
string keys.  Field metadata ``key`` names a JSON key that is not an identifier; ``omit`` drops
a field from the JSON when it is None (as the schema leaves optional parts out).  Parts a
hand-written or older result may lack have defaults, so reading one never fails on them.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

SCHEMA_VERSION = 1


def _key(f) -> str:
    return f.metadata.get("key", f.name)


def _opt(**meta):
    """An optional field: None by default and left out of the JSON when None."""
    return field(default=None, metadata={"omit": True, **meta})


def to_json(obj):
    if dataclasses.is_dataclass(obj):
        out = {}
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            if f.metadata.get("extra"):
                out.update(v or {})
                continue
            if v is None and f.metadata.get("omit"):
                continue
            out[_key(f)] = to_json(v)
        return out
    if isinstance(obj, dict):
        return {k: to_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json(v) for v in obj]
    return obj


@functools.lru_cache(maxsize=None)
def _hints(cls):  # resolved once per class: a store read parses hundreds of nested records
    return typing.get_type_hints(cls)


def _convert(tp, value):
    if value is None:
        return None
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union:  # Optional[X]
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value) if len(inner) == 1 else value
    if dataclasses.is_dataclass(tp):
        return from_json(tp, value)
    if origin in (dict, Dict) and args and dataclasses.is_dataclass(args[1]):
        return {k: from_json(args[1], v) for k, v in value.items()}
    if origin in (list, List) and args and dataclasses.is_dataclass(args[0]):
        return [from_json(args[0], v) for v in value]
    return value


def from_json(cls, data: dict):
    """Build dataclass ``cls`` from its JSON mapping; unknown keys go to an ``extra`` field if
    the class has one (provenance the caller added), else are ignored."""
    hints = _hints(cls)
    kwargs, known, extra_field = {}, set(), None
    for f in dataclasses.fields(cls):
        if f.metadata.get("extra"):
            extra_field = f.name
            continue
        k = _key(f)
        known.add(k)
        if k in data:
            kwargs[f.name] = _convert(hints[f.name], data[k])
    if extra_field:
        kwargs[extra_field] = {k: v for k, v in data.items() if k not in known}
    return cls(**kwargs)


@dataclass
class WorstClass:
    cls: Optional[str] = field(default=None, metadata={"key": "class"})
    robust_accuracy: Optional[float] = None


@dataclass
class Passes:
    forward: int = 0
    backward: int = 0


@dataclass
class AttackResult:
    """One attack's outcome over the evaluated points (robust = clean-correct and not broken)."""
    robust_accuracy: float
    ci95: Optional[List[float]] = None
    w_robust: Optional[float] = _opt()
    per_class: Optional[Dict[str, float]] = _opt()
    worst_class: Optional[WorstClass] = _opt()
    note: Optional[str] = _opt()
    backend: str = ""
    params: Dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    passes: Passes = field(default_factory=Passes)
    composition: Optional[Dict[str, Dict[str, int]]] = _opt()  # composed AutoAttack: reused / run components
    not_evaluated: Optional[int] = _opt()  # points the attack could not process (counted as not robust)
    best_of: Optional[Dict[str, int]] = _opt()  # an ensemble: per member, the points where it found the minimum
    stages: Optional[Dict[str, Any]] = _opt()  # a cascade (fast): per stage points and passes, the audit's path


@dataclass
class WorstCase:
    """The per-sample AND over every attack run."""
    robust_accuracy: float
    ci95: Optional[List[float]] = None
    w_robust: Optional[float] = _opt()
    worst_class: Optional[WorstClass] = _opt()
    attacks: List[str] = field(default_factory=list)


@dataclass
class RunConfig:
    """The evaluation's settings (``config`` in the JSON)."""
    eps: float
    norm: str
    attacks: List[str] = field(default_factory=list)
    cascade: bool = False
    batch_size: int = 256
    chunk_size: int = 1024
    seed: int = 0
    num_classes: Optional[int] = None
    channels_last: bool = False
    amp: bool = False


@dataclass
class PerSample:
    labels: Optional[List[int]] = None
    correct_clean: Optional[List[bool]] = None
    robust: Dict[str, List[bool]] = field(default_factory=dict)
    index: Optional[List[int]] = _opt()  # test-set indices of the points (dataset evaluations)
    min_distance: Optional[Dict[str, List[float]]] = _opt()
    sensitivity: Optional[List[float]] = _opt()
    confidence: Optional[List[float]] = _opt()
    not_evaluated: Optional[Dict[str, List[int]]] = _opt()  # per attack: positions of the points not evaluated


@dataclass
class Flag:
    name: str
    message: str
    evidence: Dict[str, Any] = field(default_factory=dict)


@dataclass
class Validity:
    flags: List[Flag] = field(default_factory=list)
    budget_checks: Optional[Dict[str, Any]] = None

    @property
    def names(self) -> set:
        return {f.name for f in self.flags}


@dataclass
class MinPerturbation:
    """rho_adv of one minimal-perturbation attack (seed 000 Eq. 12-13)."""
    norm: str
    n_attacked: int
    success_rate: float
    mean: Optional[float] = None
    median: Optional[float] = None
    max: Optional[float] = None


@dataclass
class Sensitivity:
    of: str
    mean: float
    fraction_below_1e10: float = field(default=0.0, metadata={"key": "fraction_below_1e-10"})


@dataclass
class Agreement:
    clean: float
    adversarial: float


@dataclass
class Transferability:
    rate: float
    points: int
    of: str = ""


@dataclass
class TransferAttack:
    robust_accuracy: float
    ci95: Optional[List[float]] = None
    surrogate: str = ""


@dataclass
class CamSimilarity:
    cosine: float
    mse: float
    cam_class: str = "label"
    norm: str = "minmax"
    on: str = ""


@dataclass
class TeacherMetrics:
    """The student against one teacher (kdbench.evaluation.distill; docs/methods.md)."""
    teacher_clean_accuracy: float
    agreement: Agreement
    transferability: Transferability
    transfer_attack: TransferAttack
    cam_similarity: CamSimilarity


@dataclass
class Knn:
    k: int
    reference: int
    clean: float
    pgd: float
    softmax_clean: float
    softmax_pgd: float


@dataclass
class Distillation:
    """The distillation metrics of a student evaluated with its teachers."""
    attack: Dict[str, Any]
    n: int
    student_clean_accuracy: float
    student_pgd_accuracy: float
    teachers: Dict[str, TeacherMetrics] = field(default_factory=dict)
    knn: Optional[Knn] = _opt()
    tsne: Optional[str] = _opt()


@dataclass
class RunInfo:
    """How a run directory's model was trained (:func:`kdbench.rundir.run_summary`)."""
    name: str
    method: Optional[str] = None
    model: Optional[str] = None
    model_kwargs: Dict[str, Any] = field(default_factory=dict)
    teachers: List[str] = field(default_factory=list)
    method_params: Dict[str, Any] = field(default_factory=dict)
    seed: Optional[int] = None
    epochs: Optional[int] = None
    train_subset: Optional[int] = None
    train_size: Optional[int] = None
    device: Optional[str] = None
    epochs_done: Optional[int] = None
    train_seconds: float = 0.0
    student_forward_images: Optional[int] = None
    teacher_forward_images: Optional[int] = None
    config_sha256: Optional[str] = None
    row: Optional[str] = _opt()  # the leaderboard row the run was named for (kdbench train --name)

    @property
    def row_name(self) -> str:
        """The run's leaderboard row: ``row`` when the run was given one; else (runs trained without
        ``--name``) its name less a ``-s<seed>`` suffix that names this run's own recorded seed
        (``ard-s1`` trained with seed 1 is row ``ard``; a suffix naming another seed is kept)."""
        if self.row:
            return self.row
        suffix = f"-s{self.seed}" if self.seed is not None else None
        return self.name[:-len(suffix)] if suffix and self.name.endswith(suffix) and self.name != suffix \
            else self.name


@dataclass
class ModelProvenance:
    spec: Optional[str] = None
    arch: Optional[str] = None
    weights: Optional[str] = None
    weights_sha256: Optional[str] = None
    run: Optional[RunInfo] = _opt()
    content_sha256: Optional[str] = _opt()  # sha256 of the parameters and buffers evaluated (guard.content_hash)
    method: Optional[str] = _opt()  # a bare weights file's training method, from its safetensors metadata


@dataclass
class DatasetProvenance:
    name: str
    split: Optional[str] = _opt()
    n: int = 0
    subset_seed: Optional[int] = _opt()
    subset_hash: Optional[str] = _opt()
    data_hash: Optional[str] = _opt()

    @property
    def points_hash(self) -> Optional[str]:
        return self.subset_hash or self.data_hash


@dataclass
class Provenance:
    kdbench_version: str = ""
    git_commit: Optional[str] = None
    libraries: Dict[str, Optional[str]] = field(default_factory=dict)
    device: str = ""
    dtype: str = ""
    seed: int = 0
    dataset: DatasetProvenance = field(default_factory=lambda: DatasetProvenance("tensors"))
    world_size: int = 1
    model: Optional[ModelProvenance] = _opt()
    extra: Dict[str, Any] = field(default_factory=dict, metadata={"extra": True})  # the caller's own keys
    start_time: Optional[str] = None
    end_time: Optional[str] = None
    key: Optional[str] = None


@dataclass
class Cost:
    """What the attacks cost (each attack's own work: an ensemble's members and a composed
    AutoAttack's reused components are counted once, where they ran)."""
    forward: int = 0
    backward: int = 0
    seconds: float = 0.0
    points_per_second: Optional[float] = None
    gpu_seconds: Optional[float] = _opt()  # CUDA: seconds x GPUs

    @property
    def passes(self) -> int:
        return self.forward + self.backward


@dataclass
class EvalResult:
    """What :func:`kdbench.evaluate` returns (and ``kdbench evaluate --out`` writes as JSON)."""
    clean_accuracy: float
    n: int
    attacks: Dict[str, AttackResult]
    config: RunConfig
    worst_case: WorstCase
    clean_ci95: Optional[List[float]] = None
    per_sample: PerSample = field(default_factory=PerSample)
    validity: Validity = field(default_factory=Validity)
    provenance: Provenance = field(default_factory=Provenance)
    schema_version: int = SCHEMA_VERSION
    min_perturbation: Optional[Dict[str, MinPerturbation]] = _opt()
    sensitivity: Optional[Sensitivity] = _opt()
    confidence: Optional[float] = _opt()
    distillation: Optional[Distillation] = _opt()
    store_id: Optional[int] = _opt()
    cost: Optional[Cost] = _opt()

    # -- JSON --------------------------------------------------------------------------
    _ORDER = ("schema_version", "clean_accuracy", "clean_ci95", "n", "attacks", "config", "per_sample", "validity",
              "min_perturbation", "sensitivity", "confidence", "worst_case", "cost", "provenance", "distillation",
              "store_id")

    def to_dict(self) -> dict:
        d = to_json(self)
        return {k: d[k] for k in self._ORDER if k in d}

    @classmethod
    def from_dict(cls, data: dict) -> "EvalResult":
        return from_json(cls, data)

    @classmethod
    def coerce(cls, r) -> "EvalResult":
        """An EvalResult from itself or from its JSON mapping."""
        return r if isinstance(r, cls) else cls.from_dict(r)

    def save(self, path) -> None:
        """Write the JSON atomically (a temp file renamed over ``path``)."""
        from ..fsutil import write_text

        write_text(path, json.dumps(self.to_dict(), indent=1))

    def __getitem__(self, k):  # the JSON view, for scripts written against dictionaries
        return self.to_dict()[k]

    # -- reading -------------------------------------------------------------------------
    def robust_accuracy(self, attack: Optional[str] = None) -> float:
        return self.worst_case.robust_accuracy if attack is None else self.attacks[attack].robust_accuracy

    @property
    def run(self) -> Optional[RunInfo]:
        return self.provenance.model.run if self.provenance.model else None

    @property
    def dataset(self) -> Optional[str]:
        return self.provenance.dataset.name

    def worst_case_flags(self) -> Optional[List[bool]]:
        """Per-sample AND over the worst case's attacks (None without per-sample outcomes)."""
        robust = self.per_sample.robust
        if not all(a in robust for a in self.worst_case.attacks):
            return None
        return [all(v) for v in zip(*(robust[a] for a in self.worst_case.attacks))]
