"""Typed training configuration, loaded from YAML and overridden by CLI flags.

Every run writes the fully resolved config it actually used to ``RUN_DIR/config.yaml``.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

from .errors import KdbenchError, missing


@dataclass
class OptimizerConfig:
    name: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False


@dataclass
class ScheduleConfig:
    name: str = "multistep"  # multistep | cosine | constant
    milestones: Optional[List[int]] = None  # epochs; None -> 50 % and 75 % of training
    gamma: float = 0.1


@dataclass
class AttackSpec:
    """Training-time inner maximisation; None -> the dataset's eps and the method's step rule."""
    eps: Optional[float] = None
    step_size: Optional[float] = None
    steps: Optional[int] = None


@dataclass
class EvalConfig:
    every: int = 1  # epochs between evaluations (0: never)
    n: int = 500  # monitor points (a seeded subset of the split below)
    split: str = "test"  # "test" (the papers' practice) or "holdout": n training images never trained on
    pgd_steps: int = 20  # 0: clean accuracy only (models selected on clean accuracy, e.g. DD)
    select: Optional[str] = None  # "clean" or "pgd"; None -> the method's choice
    batch_size: int = 256


@dataclass
class TrainConfig:
    method: str = "pgd-at"
    name: Optional[str] = None  # the run's row on leaderboards; None: the run directory's name less -s<seed>
    dataset: str = "digits"
    model: Optional[str] = None  # None -> the dataset's default architecture
    model_kwargs: Dict[str, Any] = field(default_factory=dict)
    teachers: List[str] = field(default_factory=list)
    init_from: Optional[str] = None  # run dir or weights file to initialise the student from
    chain: Dict[str, Any] = field(default_factory=dict)  # set by teacher-assistant chains
    method_params: Dict[str, Any] = field(default_factory=dict)
    epochs: Optional[int] = None
    batch_size: Optional[int] = None  # None -> the dataset's default (128; 32 for digits)
    train_subset: Optional[int] = None  # train on a seeded subset of this many images
    augment: Optional[bool] = None  # None -> the dataset's train augmentation; false -> none
    seed: int = 0
    device: str = "auto"
    amp: Optional[bool] = None  # None -> on for CUDA (bf16 when supported)
    channels_last: Optional[bool] = None  # None -> on for CUDA
    data_dir: Optional[str] = None
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    attack: AttackSpec = field(default_factory=AttackSpec)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict:
        return asdict(self)


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def check_type(value, tp, where: str):
    """``value`` checked against the annotation ``tp`` (int, float, bool, str, Optional, List,
    Dict, Any); an int is accepted for a float.  Returns the value (ints made floats)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return check_type(value, inner[0], where)
        return value
    if origin in (list, List):
        if not isinstance(value, list):
            raise KdbenchError(f"{where}: expected a list, got {value!r}")
        return [check_type(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)] if args else value
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise KdbenchError(f"{where}: expected a mapping, got {value!r}")
        return value
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok:
            value = float(value)
    elif tp is str:
        ok = isinstance(value, str)
    else:
        return value
    if not ok:
        raise KdbenchError(f"{where}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")
    return value


def _build(cls, data: Dict[str, Any], where: str):
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise KdbenchError(f"{where}: expected a mapping, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = set(data) - set(known)
    if unknown:
        raise KdbenchError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
    kwargs = {}
    hints = typing.get_type_hints(cls)
    for k, v in data.items():
        f = known[k]
        sub = f.default_factory if f.default_factory is not dataclasses.MISSING else None
        if sub is not None and dataclasses.is_dataclass(sub):
            kwargs[k] = _build(sub, v, f"{where}.{k}")
        else:
            kwargs[k] = check_type(v, hints[k], f"{where}.{k}")
    return cls(**kwargs)


def config_from_dict(data: Dict[str, Any], where: str = "config") -> TrainConfig:
    data = dict(data)
    for meta in ("kdbench_version", "dataset_info", "resolved"):
        data.pop(meta, None)
    return _build(TrainConfig, data, where)


def load_config(path) -> TrainConfig:
    p = Path(path)
    if not p.is_file():
        raise missing(p, "config file")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise KdbenchError(f"{p}: invalid YAML ({str(e).splitlines()[0]})") from None
    return config_from_dict(data, str(p))


def merge(cfg: TrainConfig, overrides: Dict[str, Any]) -> TrainConfig:
    """Apply flat or dotted overrides (``epochs``, ``optimizer.lr``); None values are ignored."""
    d = cfg.to_dict()
    for key, value in overrides.items():
        if value is None:
            continue
        node = d
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return config_from_dict(d)


def number(text) -> float:
    """A number or a fraction such as ``8/255`` (budgets on the command line, in attack specs and
    in leaderboard filters); ValueError when it is neither."""
    t = str(text).strip()
    if "/" in t:
        a, b = t.split("/", 1)
        try:
            return float(a) / float(b)
        except ZeroDivisionError:
            raise ValueError(f"division by zero in {t!r}") from None
    return float(t)
