"""Batched Carlini-Wagner minimal-perturbation attacks (Carlini & Wagner, S&P 2017), in
PyTorch, on logits, for all images of a batch at once (methods.md section 11).

Images are in [0, 1] (the reference's [-0.5, 0.5] box shifted by 0.5; distances are equal).
The change of variables is x~ = (tanh(w) + 1) / 2.  All three attacks are untargeted by
default (``targets=None``: success when the argmax leaves y); pass ``targets`` for targeted.
Each returns ``(x_adv, success)``; ``x_adv`` equals ``x`` where the attack failed.

* :func:`cw_l2` -- Adam on c f + ||x~ - x||^2 with a per-image binary search over c (11.1).
* :func:`cw_l0` -- repeated L2 solves on a shrinking set of free pixels, warm-started, with c
  doubled up to its ceiling; after each success the least useful pixels are frozen (11.2).
* :func:`cw_linf` -- Adam on c f + sum relu(|x~ - x| - tau), tau shrunk by 0.9 after each
  success, c doubled up to its ceiling (11.3).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch


def _atanh(x01: torch.Tensor) -> torch.Tensor:
    """Inverse of (tanh(w) + 1) / 2, shrunk by 0.999999 (the reference's margin)."""
    return torch.atanh((x01 * 2 - 1) * 0.999999)


def _to01(w: torch.Tensor) -> torch.Tensor:
    return (torch.tanh(w) + 1) / 2


def margin(z: torch.Tensor, y: torch.Tensor, targets: Optional[torch.Tensor], kappa: float) -> torch.Tensor:
    """CW's f on logits: untargeted max(0, Z_y - max_{j!=y} Z_j + kappa); targeted
    max(0, max_{j!=t} Z_j - Z_t + kappa)."""
    lab = targets if targets is not None else y
    onehot = torch.nn.functional.one_hot(lab, z.shape[1]).bool()
    real = z[onehot]
    other = z.masked_fill(onehot, -1e4 if z.dtype == torch.float16 else float("-inf")).max(1).values
    if targets is not None:
        return (other - real + kappa).clamp(min=0)
    return (real - other + kappa).clamp(min=0)


def _success(z: torch.Tensor, y: torch.Tensor, targets: Optional[torch.Tensor], kappa: float) -> torch.Tensor:
    if targets is not None:
        zz = z.clone()
        zz[torch.arange(len(z)), targets] -= kappa
        return zz.argmax(1) == targets
    zz = z.clone()
    zz[torch.arange(len(z)), y] += kappa
    return zz.argmax(1) != y


def _bdims(t: torch.Tensor) -> torch.Tensor:
    return t.view(-1, *([1] * 3))


def cw_l2(model, x: torch.Tensor, y: torch.Tensor, targets: Optional[torch.Tensor] = None, c0: float = 1e-3,
          kappa: float = 0.0, steps: int = 1000, binary_steps: int = 9, lr: float = 1e-2, abort_early: bool = True
          ) -> Tuple[torch.Tensor, torch.Tensor]:
    """CW-L2 with a per-image binary search over c (docs/methods.md §11.1)."""
    b = len(x)
    w0 = _atanh(x)
    lower = torch.zeros(b, device=x.device)
    upper = torch.full((b,), 1e10, device=x.device)
    c = torch.full((b,), float(c0), device=x.device)
    best_l2 = torch.full((b,), float("inf"), device=x.device)
    best = x.clone()
    for bs in range(binary_steps):
        if binary_steps >= 10 and bs == binary_steps - 1:
            c = torch.where(upper < 1e9, upper, c)
        delta = torch.zeros_like(x, requires_grad=True)
        opt = torch.optim.Adam([delta], lr=lr)
        prev = float("inf")
        step_ok = torch.zeros(b, dtype=torch.bool, device=x.device)
        for it in range(steps):
            xt = _to01(delta + w0)
            z = model(xt)
            l2 = (xt - x).flatten(1).pow(2).sum(1)
            f = margin(z, y, targets, kappa)
            loss = (l2 + c * f).sum()
            with torch.no_grad():
                ok = _success(z.detach(), y, targets, kappa)
                better = ok & (l2 < best_l2)
                best_l2 = torch.where(better, l2, best_l2)
                best[better] = xt.detach()[better]
                step_ok |= ok
            if abort_early and it % max(steps // 10, 1) == 0:
                if loss.item() > prev * 0.9999:
                    break
                prev = loss.item()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            upper = torch.where(step_ok, torch.minimum(upper, c), upper)
            lower = torch.where(step_ok, lower, torch.maximum(lower, c))
            c = torch.where(upper < 1e9, (lower + upper) / 2, c * 10)
    success = torch.isfinite(best_l2)
    return best.detach(), success


def _verified(model, x, y, targets, kappa, cand):
    """Where the candidate x' is adversarial (kappa-margin) and inside the [0, 1] box."""
    with torch.no_grad():
        flat = cand.flatten(1)
        return _success(model(cand), y, targets, kappa) & (flat.min(1).values >= 0) & (flat.max(1).values <= 1)


def _masked_step(opt, delta: torch.Tensor, g: torch.Tensor, done: torch.Tensor) -> None:
    """One Adam step on the rows not ``done``; the done rows keep their delta exactly."""
    old = delta.detach().clone()
    delta.grad = g * (~done).to(g.dtype)[:, None, None, None]
    opt.step()
    with torch.no_grad():
        delta[done] = old[done]


class _Ladder:
    """Each image's constant ladder within one solve (methods.md 11.2/11.3: c doubled, Adam state
    kept, once ``steps`` Adam steps at a constant pass without success; given up at ``c_max``).

    Two cuts make it cheap, both per image: with ``abort_early`` a constant is abandoned when its
    loss improved by less than 0.01 % over the last ``abort_every`` steps (default ``steps // 10``:
    CW-L2's abort_early, whose first step sets the baseline); and the ladder is given up when ``patience`` doublings in
    a row brought no 1 % decrease of the margin f, each with c f at least 90 % of the loss (a
    hopeless constant: Adam is invariant to the loss's scale, so once c f is nearly all of the
    loss, doubling c leaves the trajectory as it was; 0 = never).  The rule is a heuristic: it kept
    CW-L-inf's distances from a warm start (the registry's cw-linf-min runs it only with one),
    stopped CW-L-inf's ladder too early when started at x (mean distance +11 % on digits), and on
    the robust Fashion-MNIST model gave CW-L0 up at small constants, where delta is tiny so c f is
    nearly all the loss yet a larger c still helps (cw-l0 runs without it)."""

    def __init__(self, c: torch.Tensor, steps: int, const_factor: float, c_max: float, abort_early: bool,
                 patience: int = 0, abort_every: Optional[int] = None):
        b, dev = len(c), c.device
        self.c, self.steps, self.factor, self.c_max = c, steps, const_factor, c_max
        self.abort_early, self.patience = abort_early, patience
        self.check = max(abort_every or steps // 10, 1)
        self.level = torch.zeros(b, dtype=torch.long, device=dev)
        self.last = torch.full((b,), float("inf"), device=dev)
        self.fbest = torch.full((b,), float("inf"), device=dev)
        self.fmark = torch.full((b,), float("inf"), device=dev)
        self.stale = torch.zeros(b, dtype=torch.long, device=dev)

    def step(self, done: torch.Tensor, act: torch.Tensor, per: torch.Tensor, f: torch.Tensor) -> None:
        """After one Adam step of the rows ``act`` (losses ``per``, margins ``f``): bump the
        constants due, mark given-up rows done (in place)."""
        self.level[act] += 1
        lv = self.level[act]
        self.fbest[act] = torch.minimum(self.fbest[act], f)
        bump = lv >= self.steps
        if self.abort_early:
            chk = (lv - 1) % self.check == 0
            bump |= chk & (per > 0.9999 * self.last[act])
            self.last[act] = torch.where(chk, per, self.last[act])
        bump &= ~done[act]
        rows = act[bump]
        if not len(rows):
            return
        self.c[rows] *= self.factor
        self.level[rows] = 0
        self.last[rows] = float("inf")
        gave_up = self.c[rows] >= self.c_max
        if self.patience:
            # hopeless: c f is at least 90 % of the loss and f did not fall by 1 % at this constant
            c_was = self.c[rows] / self.factor
            hopeless = (c_was * f[bump] >= 0.9 * per[bump]) & (self.fbest[rows] >= 0.99 * self.fmark[rows])
            self.stale[rows] = torch.where(hopeless, self.stale[rows] + 1, torch.zeros_like(self.stale[rows]))
            self.fmark[rows] = self.fbest[rows]
            gave_up |= self.stale[rows] >= self.patience
        done[rows[gave_up]] = True


def cw_linf(model, x: torch.Tensor, y: torch.Tensor, targets: Optional[torch.Tensor] = None, c0: float = 1e-5,
            c_max: float = 20.0, steps: int = 1000, lr: float = 5e-3, decrease: float = 0.9, kappa: float = 0.0,
            const_factor: float = 2.0, abort_early: bool = True, patience: int = 0,
            start: Optional[torch.Tensor] = None, abort_every: Optional[int] = None
            ) -> Tuple[torch.Tensor, torch.Tensor]:
    """CW-L-inf (docs/methods.md §11.3), batched: each image has its own tau, c, ladder and warm
    start, and only the images still solving go through the model.  ``start``: a cheap attack's x'
    to begin from where it is adversarial (tau = decrease x its L-inf distance), so the result is
    never above it."""
    b, dev = len(x), x.device
    tau = torch.ones(b, device=dev)
    c = torch.full((b,), float(c0), device=dev)
    begin = x.clone()
    best = x.clone()
    success = torch.zeros(b, dtype=torch.bool, device=dev)
    if start is not None:
        ok = _verified(model, x, y, targets, kappa, start)
        best[ok], begin[ok] = start[ok], start[ok]
        success |= ok
        tau = torch.where(ok, (start - x).flatten(1).abs().max(1).values * decrease, tau)
    active = tau > 1 / 256
    while active.any():
        # one solve per round: Adam reset once, each image's c doubled while it has not succeeded
        ws = _atanh(begin)
        delta = torch.zeros_like(x, requires_grad=True)
        opt = torch.optim.Adam([delta], lr=lr)
        done = ~active
        found = torch.zeros(b, dtype=torch.bool, device=dev)
        ladder = _Ladder(c, steps, const_factor, c_max, abort_early, patience, abort_every)
        sol = begin.clone()
        while not done.all():
            act = (~done).nonzero().squeeze(1)
            xt = _to01(delta[act] + ws[act])
            z = model(xt)
            pen = (torch.abs(xt - x[act]) - _bdims(tau[act])).clamp(min=0).flatten(1).sum(1)
            f = margin(z, y[act], None if targets is None else targets[act], kappa)
            per = c[act] * f + pen
            g, = torch.autograd.grad(per.sum(), delta)  # zero on the rows not in act
            with torch.no_grad():
                hit_a = (per < 1e-4 * c[act]) & _success(z, y[act], None if targets is None else targets[act], kappa)
                sol[act[hit_a]] = xt.detach()[hit_a]
                found[act[hit_a]] = True
                done[act[hit_a]] = True
                ladder.step(done, act, per.detach(), f.detach())
            if done.all():
                break
            _masked_step(opt, delta, g, done)
        # outer update
        with torch.no_grad():
            active &= found
            best[found] = sol[found]
            success |= found
            dist = (sol - x).flatten(1).abs().max(1).values
            tau = torch.where(found, torch.minimum(tau, dist) * decrease, tau)
            begin[found] = sol[found]
            active &= tau > 1 / 256
    return best, success


def cw_l0(model, x: torch.Tensor, y: torch.Tensor, targets: Optional[torch.Tensor] = None, c0: float = 1e-3,
          c_max: float = 2e6, steps: int = 1000, lr: float = 1e-2, const_factor: float = 2.0,
          reduce_const: bool = False, kappa: float = 0.01, max_rounds: Optional[int] = None,
          abort_early: bool = True, patience: int = 0, start: Optional[torch.Tensor] = None,
          abort_every: Optional[int] = 10) -> Tuple[torch.Tensor, torch.Tensor]:
    """CW-L0 (docs/methods.md §11.2), batched.  Pixels (all channels at once) are frozen to the
    original after each successful L2 solve, least useful first, until the solve fails; the
    result is the last success.  L0 counts changed pixels.  ``start``: a cheap attack's x' to
    begin from where it is adversarial, its unchanged pixels frozen from the start, so the result
    never changes more pixels than it; ``abort_early``, ``patience`` and ``abort_every`` as in
    :class:`_Ladder` (a plateau check every 10 steps and no give-up rule: the distances of the
    reference schedule at under a tenth of its passes on digits and Fashion-MNIST,
    benchmarks/cw_speed.py)."""
    b, ch, h, wd = x.shape
    dev = x.device
    valid = torch.ones(b, 1, h, wd, device=dev)
    prev = x.clone()
    c = torch.full((b,), float(c0), device=dev)
    best = x.clone()
    success = torch.zeros(b, dtype=torch.bool, device=dev)
    if start is not None:
        ok = _verified(model, x, y, targets, kappa, start)
        best[ok], prev[ok] = start[ok], start[ok]
        success |= ok
        changed = ((start - x).abs() >= 1e-4).any(1, keepdim=True).to(valid.dtype)
        valid = torch.where(ok[:, None, None, None], changed, valid)
    active = valid.flatten(1).sum(1) > 0
    rounds = 0
    while active.any() and (max_rounds is None or rounds < max_rounds):
        rounds += 1
        ws = _atanh(prev)
        delta = torch.zeros_like(x, requires_grad=True)
        opt = torch.optim.Adam([delta], lr=lr)
        done = ~active
        found = torch.zeros(b, dtype=torch.bool, device=dev)
        grad = torch.zeros_like(x)
        sol = prev.clone()
        ladder = _Ladder(c, steps, const_factor, c_max, abort_early, patience, abort_every)
        while not done.all():
            # only the images still solving go through the model (a batch is as slow as its
            # slowest image otherwise); each loss depends on its own row, so one backward serves all
            act = (~done).nonzero().squeeze(1)
            va, xa_ = valid[act], x[act]
            xt = va * _to01(delta[act] + ws[act]) + (1 - va) * xa_
            f = margin(model(xt), y[act], None if targets is None else targets[act], kappa)
            per = c[act] * f + (xt - xa_).flatten(1).pow(2).sum(1)
            g, = torch.autograd.grad(per.sum(), delta)  # zero on the rows not in act
            with torch.no_grad():
                hit_a = f < 1e-4  # success read at the pre-step point (abort early)
                hit = torch.zeros_like(done)
                hit[act[hit_a]] = True
                grad[hit] = g[hit]
                sol[act[hit_a]] = xt.detach()[hit_a]
                found |= hit
                done |= hit
                ladder.step(done, act, per.detach(), f.detach())
            if done.all():
                break
            _masked_step(opt, delta, g, done)
        with torch.no_grad():
            active &= found
            if not active.any():
                break
            best[found] = sol[found]
            success |= found
            if reduce_const:
                c = torch.where(found, c / 2, c)
            changed = ((sol - x).abs() >= 1e-4).any(1).flatten(1)  # B x HW
            n_chg = changed.sum(1).float()
            score = (sol - x).sum(1).abs().flatten(1) * grad.abs().sum(1).flatten(1)  # B x HW
            v = valid.flatten(1).bool()
            score = score.masked_fill(~v, float("inf"))
            order = score.argsort(1)
            sorted_s = score.gather(1, order)
            cap = torch.clamp(torch.ceil(0.3 * n_chg.sqrt()), min=1)
            big = (sorted_s > 0.01)
            first_big = torch.where(big.any(1), big.float().argmax(1), torch.full_like(n_chg, h * wd).long())
            n_freeze = torch.minimum(first_big.float() + 1, cap)
            n_freeze = torch.minimum(n_freeze, v.sum(1).float())
            rank = torch.arange(h * wd, device=dev)[None].expand(b, -1)
            freeze_sorted = (rank < n_freeze[:, None]) & found[:, None]
            freeze = torch.zeros_like(v)
            freeze.scatter_(1, order, freeze_sorted)
            valid = (valid.flatten(1) * (~freeze).float()).view(b, 1, h, wd)
            prev = torch.where(found[:, None, None, None], sol, prev)
            active &= valid.flatten(1).sum(1) > 0
    return best, success


def l0_pixels(delta: torch.Tensor, tol: float = 1e-4) -> torch.Tensor:
    """Changed pixels per image: a pixel counts once if any channel changed by >= tol."""
    return (delta.abs() >= tol).any(1).flatten(1).sum(1)


def distance(delta: torch.Tensor, norm: str) -> torch.Tensor:
    flat = delta.flatten(1)
    if norm == "L0":
        return l0_pixels(delta).float()
    if norm == "L2":
        return flat.norm(dim=1)
    if norm == "Linf":
        return flat.abs().max(1).values
    raise ValueError(norm)


