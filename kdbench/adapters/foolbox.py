"""foolbox adapter: ``run(model, x, y)`` over foolbox's minimal-norm call
``foolbox.attacks.<Class>(**params)(PyTorchModel(model, bounds=(0, 1)), x, y, epsilons=None)``,
which returns each point's smallest adversarial example found (the input itself where the attack
failed); kdbench re-checks every returned x' (prediction, box, distance)."""
from __future__ import annotations


def foolbox_run(cls_name: str, **params):
    def run(model, x, y):
        import foolbox

        fmodel = foolbox.PyTorchModel(model, bounds=(0, 1), device=x.device)
        _, clipped, _ = getattr(foolbox.attacks, cls_name)(**params)(fmodel, x, y, epsilons=None)
        return clipped

    return run
