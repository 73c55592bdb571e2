"""Teacher-assistant chains: teacher -> assistant(s) -> student, each link its own run directory
whose config names the previous link as its teacher (``kdbench train --method takd --chain K``).

* ``--chain 2`` with one architecture: seed 000's teacher -> assistant -> student (all the
  same network, defensive-distillation loss at T); ``--chain 6``: its multi-step chain.
* ``--chain-models wrn-28-4,resnet18,smallcnn``: Mirzadeh et al.'s smaller assistant
  (use ``--set method_params.loss=kd``).
Without ``--teacher`` the chain first trains its teacher: defensive distillation at T on hard
labels (``loss: dd``) or natural training (``loss: kd``)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Union

from ..config import TrainConfig, merge
from ..errors import KdbenchError
from ..methods import get_method
from ..rundir import link_names
from .engine import train


def train_chain(cfg: TrainConfig, out, links: int, models: Optional[List[str]] = None, resume: bool = False,
                progress: Union[bool, str] = "log") -> List[Path]:
    if links < 1:
        raise KdbenchError(f"--chain must be at least 1, got {links}")
    out = Path(out)
    has_teacher = bool(cfg.teachers)
    n_models = links + (0 if has_teacher else 1)
    if models is not None and len(models) != n_models:
        raise KdbenchError(f"--chain-models needs {n_models} architectures ({'' if has_teacher else 'teacher, '}"
                           f"{links} link(s)), got {len(models)}")
    models = models or [cfg.model] * n_models
    dirs: List[Path] = []
    params = dict(cfg.method_params)
    base = {"teachers": [], "method_params": {}, "chain": {"root": str(out), "links": links}}
    if has_teacher:
        prev = Path(cfg.teachers[0])
    else:
        prev = out / "teacher"
        if params.get("loss", "dd") == "dd":
            tcfg = merge(cfg, {**base, "method": "dd", "model": models[0],
                               "method_params": {"T": params.get("T", get_method("takd").params["T"])}})
        else:
            tcfg = merge(cfg, {**base, "method": "natural", "model": models[0]})
        tcfg.chain = {"root": str(out), "links": links, "index": 0, "role": "teacher"}
        tcfg.name = f"{cfg.name}/teacher" if cfg.name else None
        train(tcfg, prev, resume=resume and (prev / "config.yaml").exists(), progress=progress)
        dirs.append(prev)
        models = models[1:]
    for i, (name, arch) in enumerate(zip(link_names(links), models), start=1):
        d = out / name
        lcfg = merge(cfg, {"teachers": [str(prev)], "model": arch})
        lcfg.chain = {"root": str(out), "links": links, "index": i, "role": name, "teacher": str(prev)}
        lcfg.name = (cfg.name if name == "student" else f"{cfg.name}/{name}") if cfg.name else None
        train(lcfg, d, resume=resume and (d / "config.yaml").exists(), progress=progress)
        dirs.append(d)
        prev = d
    return dirs
