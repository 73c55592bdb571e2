"""Distillation-specific metrics for a student and its teacher(s) (Distillation methods II, item 5).

* ``agreement``: share of points where student and teacher predict the same class, on clean x and
  on the student's PGD-20 adversarial x'.
* ``transferability`` (seed 001, 4.1): on points every teacher classifies correctly, the share of
  the student's successful PGD-20 adversarial examples that also fool the teacher.
* ``transfer_attack`` (seed 002, Table 5): black-box robust accuracy of the student under PGD-20
  crafted on the teacher (the surrogate), with its Wilson interval.
* ``cam_similarity`` (seed 002, 4.6.2): mean cosine similarity (and MSE) between the student's and
  the teacher's min-max CAMs for the true class, on the student's adversarial examples.
* ``knn`` (seed 003, section 6): k-NN accuracy (k = 50, Euclidean, majority vote) on the student's
  penultimate embedding, the reference set being training images, clean and under PGD-20.
Adversarial examples come from the evaluation attack registry (torchattacks PGD, 20 steps of eps/4).
"""
from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn.functional as F

from ..models import forward_all
from ..models.cam import cam_pair
from . import metrics
from ..attacks.registry import build_attack


def _batched(fn, n, batch_size):
    return torch.cat([fn(slice(s, s + batch_size)) for s in range(0, n, batch_size)])


def _predict(model, x, dev, batch_size):
    with torch.no_grad():
        return _batched(lambda s: model(x[s].to(dev)).argmax(1).cpu(), len(x), batch_size)


def _embed(model, x, dev, batch_size):
    with torch.no_grad():
        return _batched(lambda s: forward_all(model, x[s].to(dev)).embedding.float().cpu(), len(x), batch_size)


def pgd20(model, x, y, eps, norm, seed, dev, batch_size, num_classes):
    """PGD-20 through the attack registry (torchattacks), batched; returns adversarial images."""
    a = build_attack("pgd", eps, norm, seed, num_classes)
    torch.manual_seed(seed)
    out = []
    for s in range(0, len(x), batch_size):
        out.append(a.run(model, x[s:s + batch_size].to(dev), y[s:s + batch_size].to(dev)).detach().cpu())
    return torch.cat(out), a


def knn_accuracy(ref: torch.Tensor, ref_y: torch.Tensor, query: torch.Tensor, y: torch.Tensor, k: int = 50,
                 num_classes: Optional[int] = None) -> float:
    """Majority vote of the k nearest (Euclidean) reference embeddings; ties go to the lower class."""
    C = num_classes or int(max(ref_y.max(), y.max())) + 1
    correct = 0
    for s in range(0, len(query), 512):
        d = torch.cdist(query[s:s + 512], ref)
        nn_idx = d.topk(min(k, len(ref)), largest=False).indices
        votes = F.one_hot(ref_y[nn_idx], C).sum(1)
        correct += (votes.argmax(1) == y[s:s + 512]).sum().item()
    return correct / len(query)


def distillation_metrics(student, teachers: List, x, y, *, eps: float, norm: str = "Linf", dev=None,
                         batch_size: int = 256, seed: int = 0, train_x=None, train_y=None, k: int = 50,
                         teacher_names: Optional[List[str]] = None, tsne_path=None, phase=None) -> dict:
    """The metrics of the module docstring; ``phase`` (:class:`kdbench.progress.Phase`) advances
    once per part: the student's PGD-20, each teacher, the k-NN, the t-SNE."""
    tick = phase.advance if phase is not None else (lambda n=1: None)
    dev = dev or torch.device("cpu")
    student = student.to(dev).eval()
    teachers = [t.to(dev).eval() for t in teachers]
    C = None
    with torch.no_grad():
        C = student(x[:1].to(dev)).shape[1]
    s_clean = _predict(student, x, dev, batch_size)
    x_adv, atk = pgd20(student, x, y, eps, norm, seed, dev, batch_size, C)
    s_adv = _predict(student, x_adv, dev, batch_size)
    fooled_s = s_adv != y
    tick()
    out = {"attack": {"name": "pgd", "backend": atk.backend, "params": atk.params, "eps": eps, "norm": norm},
           "n": len(y), "student_clean_accuracy": (s_clean == y).float().mean().item(),
           "student_pgd_accuracy": (~fooled_s).float().mean().item(), "teachers": {}}
    t_clean_all = [_predict(t, x, dev, batch_size) for t in teachers]
    all_right = torch.stack([tc == y for tc in t_clean_all]).all(0)
    names = teacher_names or [f"teacher{i}" for i in range(len(teachers))]
    for name, t, t_clean in zip(names, teachers, t_clean_all):
        t_on_s_adv = _predict(t, x_adv, dev, batch_size)
        pool = all_right & fooled_s
        transfer = ((t_on_s_adv != y) & pool).sum().item() / max(pool.sum().item(), 1)
        xt_adv, _ = pgd20(t, x, y, eps, norm, seed, dev, batch_size, C)
        s_on_t_adv = _predict(student, xt_adv, dev, batch_size) == y
        r = int(s_on_t_adv.sum())
        cos, mse = [], []
        for s in range(0, len(y), batch_size):
            with torch.no_grad():
                _, _, cs, ct = cam_pair(student, t, x_adv[s:s + batch_size].to(dev), y[s:s + batch_size].to(dev))
            cos.append(F.cosine_similarity(cs.flatten(1), ct.flatten(1), dim=1, eps=1e-8).cpu())
            mse.append((cs - ct).pow(2).flatten(1).mean(1).cpu())
        out["teachers"][name] = {
            "teacher_clean_accuracy": (t_clean == y).float().mean().item(),
            "agreement": {"clean": (s_clean == t_clean).float().mean().item(),
                          "adversarial": (s_adv == t_on_s_adv).float().mean().item()},
            "transferability": {"rate": transfer, "points": int(pool.sum()),
                                "of": "student PGD-20 successes on points every teacher classifies correctly"},
            "transfer_attack": {"robust_accuracy": r / len(y), "ci95": list(metrics.wilson(r, len(y))),
                                "surrogate": name},
            "cam_similarity": {"cosine": torch.cat(cos).mean().item(), "mse": torch.cat(mse).mean().item(),
                               "cam_class": "label", "norm": "minmax", "on": "student PGD-20 examples"},
        }
        tick()
    if train_x is not None:
        ref = _embed(student, train_x, dev, batch_size)
        e_clean, e_adv = _embed(student, x, dev, batch_size), _embed(student, x_adv, dev, batch_size)
        out["knn"] = {"k": k, "reference": len(train_y), "clean": knn_accuracy(ref, train_y, e_clean, y, k, C),
                      "pgd": knn_accuracy(ref, train_y, e_adv, y, k, C),
                      "softmax_clean": out["student_clean_accuracy"], "softmax_pgd": out["student_pgd_accuracy"]}
        tick()
    if tsne_path is not None:
        e_clean = _embed(student, x, dev, batch_size)
        e_adv = _embed(student, x_adv, dev, batch_size)
        out["tsne"] = str(tsne_plot(e_clean, e_adv, y, tsne_path, seed))
        tick()
    return out


def tsne_plot(e_clean: torch.Tensor, e_adv: torch.Tensor, y: torch.Tensor, path, seed: int = 0):
    """t-SNE of clean (triangles, coloured by class) and adversarial (red circles) embeddings,
    as seed 003's Figures 1-4."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    z = torch.cat([e_clean, e_adv]).numpy()
    pts = TSNE(n_components=2, init="pca", random_state=seed, perplexity=min(30, max(5, len(z) // 4))).fit_transform(z)
    n = len(e_clean)
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.scatter(pts[:n, 0], pts[:n, 1], c=y.numpy(), cmap="tab10", marker="^", s=10, label="clean")
    ax.scatter(pts[n:, 0], pts[n:, 1], facecolors="none", edgecolors="red", marker="o", s=10, linewidths=0.5,
               label="PGD-20")
    ax.legend(loc="best")
    ax.set_title("t-SNE of penultimate embeddings")
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
