"""A model whose exact minimal L0, L2 and L-inf distances are known in closed form (the test
files of this folder use it as their module-scoped ``case`` fixture)."""
import torch
import torch.nn as nn


class Lin2(nn.Module):
    """logits (0, w.x + b): the decision boundary is the hyperplane w.x + b = 0."""

    def __init__(self, w, b):
        super().__init__()
        self.w, self.b = nn.Parameter(w, requires_grad=False), nn.Parameter(torch.tensor(b), requires_grad=False)

    def forward(self, x):
        z = x.flatten(1) @ self.w + self.b
        return torch.stack([torch.zeros_like(z), z], 1)


def make_case():
    torch.manual_seed(0)
    d = 16
    w = torch.randn(d)
    model = Lin2(w, 0.0)
    x = 0.35 + 0.3 * torch.rand(24, 1, 4, 4)
    z = x.flatten(1) @ w
    y = (z > 0).long()  # all correctly classified
    keep = z.abs() > 0.05
    x, y, z = x[keep], y[keep], z[keep]
    # exact minimal distances (the box does not bind for L2 / L-inf here: checked below)
    l2 = z.abs() / w.norm()
    linf = z.abs() / w.abs().sum()
    # L0: pixel i can move z by |w_i| * room_i towards the boundary (room = 1 - x or x)
    sign = -torch.sign(z)[:, None] * torch.sign(w)[None]  # direction each pixel should move
    room = torch.where(sign > 0, 1 - x.flatten(1), x.flatten(1))
    contrib = (w.abs()[None] * room).sort(1, descending=True).values.cumsum(1)
    l0 = (contrib < z.abs()[:, None]).sum(1) + 1
    assert (linf < 0.3).all()
    return model, x, y, l2, linf, l0
