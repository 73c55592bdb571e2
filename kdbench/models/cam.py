"""Class activation maps (Zhou et al. 2016) for any pair of models, at a common size: used by
SmaraAD's alignment loss and by the CAM-similarity distillation metric (seed 002, 4.6.2)."""
from __future__ import annotations

from .. import losses
from ..errors import KdbenchError
from .base import classifier_of, forward_all


def cam_pair(student, teacher, x, y, cam_class: str = "label", norm: str = "minmax"):
    """(student logits, teacher logits, student CAM, teacher CAM) on x.  Both maps are resized
    bilinearly to the larger of the two feature-map sizes.  ``cam_class``: ``label`` (the true
    class for both), ``pred`` (each model's own prediction) or ``teacher`` (the teacher's
    prediction for both)."""
    so, to = forward_all(student, x), forward_all(teacher, x)
    pairs = []
    for out, model in ((so, student), (to, teacher)):
        w = classifier_of(model).weight
        if w.shape[1] != out.feature_map.shape[1]:
            raise KdbenchError(f"CAM: {type(model).__name__}'s classifier takes {w.shape[1]} features but its "
                               f"last feature map has {out.feature_map.shape[1]} channels; CAMs need a classifier "
                               "on the pooled last feature map (smallcnn, resnet, wrn, mobilenetv2, vit)")
        pairs.append((out, w))
    size = max((tuple(o.feature_map.shape[-2:]) for o, _ in pairs), key=lambda s: s[0] * s[1])
    maps = []
    for out, w in pairs:
        if cam_class == "label":
            cls = y
        elif cam_class == "pred":
            cls = out.logits.argmax(1)
        elif cam_class == "teacher":
            cls = to.logits.argmax(1)
        else:
            raise KdbenchError(f"cam_class must be label, pred or teacher, got {cam_class!r}")
        maps.append(losses.cam(out.feature_map, w, cls.detach(), size, norm))
    return so.logits, to.logits, maps[0], maps[1]
