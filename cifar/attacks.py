"""Attacks in pixel space ([0, 1] images), l_inf and l_2 balls.

White-box: PGD (with restarts, keeps any misclassified iterate), FGSM with random start
(Wong et al. 2020), APGD on CE and on the targeted DLR loss (Croce & Hein 2020).
Black-box: Square (Andriushchenko et al. 2020), score-based, so it cannot be fooled by
masked gradients.  Every attack returns adversarial images inside the ball and the box;
``model`` is any callable mapping images to logits (use runtime.Forward, in eval mode).
"""

from __future__ import annotations

import math
import random

import torch
import torch.nn.functional as F

from sim.common.validation import ConfigError  # bad parameters: one error type with sim

from cifar.config import EPS_LIMITS, IMAGE_DIM, NORMS, check_threat, parse_eps  # noqa: F401  (re-exported)


def _bnorm(t: torch.Tensor) -> torch.Tensor:
    """Per-example l2 norm, shaped (n, 1, 1, 1)."""
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.dim() - 1)))


def perturbation_norms(x_adv: torch.Tensor, x: torch.Tensor, norm: str) -> torch.Tensor:
    d = (x_adv - x).flatten(1)
    return d.abs().amax(dim=1) if norm == "linf" else d.norm(dim=1)


def project(x_adv: torch.Tensor, x: torch.Tensor, norm: str, eps: float) -> torch.Tensor:
    """Closest point (for l_inf; radial for l_2) of the ball around x, then clipped to [0, 1]
    (clipping moves towards x, so it never leaves the ball)."""
    d = x_adv - x
    if norm == "linf":
        d = d.clamp(-eps, eps)
    else:
        d = d * (eps / _bnorm(d).clamp_min(1e-12)).clamp(max=1.0)
    return (x + d).clamp(0.0, 1.0)


def _gen(x: torch.Tensor, seed: int | None) -> torch.Generator | None:
    return None if seed is None else torch.Generator(device=x.device).manual_seed(seed)


def random_start(x: torch.Tensor, norm: str, eps: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform in the l_inf cube; for l_2 a random direction with a uniform radius."""
    if norm == "linf":
        d = (torch.rand(x.shape, device=x.device, generator=generator) * 2 - 1) * eps
    else:
        d = torch.randn(x.shape, device=x.device, generator=generator)
        r = torch.rand(x.shape[0], device=x.device, generator=generator).view(-1, 1, 1, 1)
        d = d / _bnorm(d).clamp_min(1e-12) * eps * r
    return (x + d).clamp(0.0, 1.0)


def _ascent(x_adv: torch.Tensor, grad: torch.Tensor, norm: str, alpha) -> torch.Tensor:
    if norm == "linf":
        return x_adv + alpha * grad.sign()
    return x_adv + alpha * grad / _bnorm(grad).clamp_min(1e-12)


# --------------------------------------------------------------------------- losses


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Difference-of-logits ratio (Croce & Hein 2020), to be maximised; scale invariant."""
    s, ind = logits.sort(dim=1)
    top_is_y = (ind[:, -1] == y).float()
    zy = logits.gather(1, y[:, None]).squeeze(1)
    z_other = s[:, -2] * top_is_y + s[:, -1] * (1 - top_is_y)
    return -(zy - z_other) / (s[:, -1] - s[:, -3] + 1e-12)


def dlr_targeted_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    s, _ = logits.sort(dim=1)
    zy = logits.gather(1, y[:, None]).squeeze(1)
    zt = logits.gather(1, target[:, None]).squeeze(1)
    return -(zy - zt) / (s[:, -1] - 0.5 * (s[:, -3] + s[:, -4]) + 1e-12)


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """z_y - max_{j != y} z_j: negative means misclassified."""
    zy = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], float("-inf")).amax(dim=1)
    return zy - other


def _loss_fn(name: str, target: torch.Tensor | None = None):
    if name == "ce":
        return lambda z, y: F.cross_entropy(z, y, reduction="none")
    if name == "dlr":
        return dlr_loss
    if name == "dlr-targeted":
        if target is None:
            raise ConfigError("loss 'dlr-targeted' needs target classes")
        return lambda z, y: dlr_targeted_loss(z, y, target)
    raise ConfigError(f"loss must be one of ('ce', 'dlr', 'dlr-targeted'), got {name!r}")


def loss_and_grad(model, x: torch.Tensor, y: torch.Tensor, loss_fn) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(d sum(loss) / dx, logits, per-example loss), without touching parameter gradients."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        loss = loss_fn(logits, y)
        (g,) = torch.autograd.grad(loss.sum(), x)
    return g.detach(), logits.detach(), loss.detach()


# --------------------------------------------------------------------------- white-box


def fgsm(model, x, y, norm: str, eps: float, alpha: float | None = None, random_init: bool = True, seed: int | None = None):
    """One signed-gradient (l_inf) or normalised-gradient (l_2) step; with a random start and
    alpha = 1.25 eps by default ("FGSM-RS", Wong et al. 2020)."""
    check_threat(norm, eps)
    alpha = (1.25 * eps if random_init else eps) if alpha is None else alpha
    x_adv = random_start(x, norm, eps, _gen(x, seed)) if random_init else x.clone()
    g, _, _ = loss_and_grad(model, x_adv, y, _loss_fn("ce"))
    return project(_ascent(x_adv, g, norm, alpha), x, norm, eps)


def pgd(
    model,
    x,
    y,
    norm: str,
    eps: float,
    steps: int = 10,
    alpha: float | None = None,
    restarts: int = 1,
    random_init: bool = True,
    loss: str = "ce",
    track: bool = True,
    seed: int | None = None,
):
    """Projected gradient ascent (Madry et al. 2018), step alpha = 2.5 eps / steps by default.

    With ``track`` (evaluation) every iterate of every restart is checked and, per example,
    the first misclassified one is returned, else the highest-loss one; without it
    (training) the last iterate of the last restart is returned.
    """
    check_threat(norm, eps)
    if steps < 1 or restarts < 1:
        raise ConfigError(f"steps and restarts must be >= 1, got steps={steps}, restarts={restarts}")
    alpha = 2.5 * eps / steps if alpha is None else alpha
    fn = _loss_fn(loss)
    gen = _gen(x, seed)
    best = x.clone()
    best_loss = torch.full((x.shape[0],), float("-inf"), device=x.device)
    fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)

    def record(xa, logits, li):
        nonlocal fooled
        wrong = logits.argmax(1) != y
        new = wrong & ~fooled
        best[new] = xa[new]
        fooled = fooled | wrong
        better = ~fooled & (li > best_loss)
        best[better] = xa[better]
        best_loss[better] = li[better]

    x_adv = x
    for _ in range(restarts):
        x_adv = random_start(x, norm, eps, gen) if random_init else x.clone()
        for _ in range(steps):
            g, logits, li = loss_and_grad(model, x_adv, y, fn)
            if track:
                record(x_adv, logits, li)
                if fooled.all():  # nothing left to attack
                    return best
            x_adv = project(_ascent(x_adv, g, norm, alpha), x, norm, eps)
        if track:
            with torch.no_grad():
                logits = model(x_adv)
            record(x_adv, logits, fn(logits, y))
            if fooled.all():
                return best
    return best if track else x_adv.detach()


def apgd(
    model,
    x,
    y,
    norm: str,
    eps: float,
    steps: int = 100,
    loss: str = "ce",
    target: torch.Tensor | None = None,
    rho: float = 0.75,
    seed: int | None = 0,
):
    """Auto-PGD (Croce & Hein 2020): step size 2 eps halved at checkpoints when the loss
    oscillates or stalls, momentum 0.75, restart from the best point.  Returns per example
    the first misclassified iterate found, else the highest-loss one."""
    check_threat(norm, eps)
    fn = _loss_fn(loss, target)
    gen = _gen(x, seed)
    n = x.shape[0]
    k = max(int(0.22 * steps), 1)
    k_min, k_decr = max(int(0.06 * steps), 1), max(int(0.03 * steps), 1)

    if norm == "linf":
        t = torch.rand(x.shape, device=x.device, generator=gen) * 2 - 1
        t = t / t.flatten(1).abs().amax(1).view(-1, 1, 1, 1).clamp_min(1e-12)
    else:
        t = torch.randn(x.shape, device=x.device, generator=gen)
        t = t / _bnorm(t).clamp_min(1e-12)
    x_adv = (x + eps * t).clamp(0, 1)

    def step_to(x_from, direction, size):
        return project(_ascent(x_from, direction, norm, size), x, norm, eps)

    grad, logits, loss_cur = loss_and_grad(model, x_adv, y, fn)
    fooled = logits.argmax(1) != y
    x_best_adv = x_adv.clone()
    x_best, grad_best, loss_best = x_adv.clone(), grad.clone(), loss_cur.clone()
    losses = [loss_cur]
    step = torch.full((n, 1, 1, 1), 2.0 * eps, device=x.device)
    x_old = x_adv.clone()
    counter = 0
    loss_best_last = loss_best.clone()
    reduced_last = torch.ones(n, dtype=torch.bool, device=x.device)

    for i in range(steps):
        with torch.no_grad():
            a = 0.75 if i > 0 else 1.0
            z = step_to(x_adv, grad, step)
            x_new = project(x_adv + a * (z - x_adv) + (1 - a) * (x_adv - x_old), x, norm, eps)
            x_old, x_adv = x_adv, x_new
        grad, logits, loss_cur = loss_and_grad(model, x_adv, y, fn)
        wrong = logits.argmax(1) != y
        new = wrong & ~fooled
        x_best_adv[new] = x_adv[new]
        fooled |= wrong
        if fooled.all():  # every point broken: the rest would not change the result
            break
        losses.append(loss_cur)
        improved = loss_cur > loss_best
        x_best[improved], grad_best[improved], loss_best[improved] = x_adv[improved], grad[improved], loss_cur[improved]
        counter += 1
        if counter == k:
            hist = torch.stack(losses[-(k + 1):])
            increases = (hist[1:] > hist[:-1]).float().sum(0)
            oscillating = increases <= k * rho
            stalled = ~reduced_last & (loss_best_last >= loss_best)
            reduce = oscillating | stalled
            reduced_last = reduce
            loss_best_last = loss_best.clone()
            if reduce.any():
                step[reduce] /= 2.0
                x_adv[reduce] = x_best[reduce]
                grad[reduce] = grad_best[reduce]
            counter = 0
            k = max(k - k_decr, k_min)
    return torch.where(fooled.view(-1, 1, 1, 1), x_best_adv, x_best)


def apgd_targeted(model, x, y, norm: str, eps: float, steps: int = 100, n_targets: int = 9, seed: int | None = 0):
    """APGD on the targeted DLR loss, one run per target class: the 2nd, 3rd, ... most
    likely classes at the clean point.  Points already misclassified are left alone."""
    with torch.no_grad():
        logits = model(x)
    n_targets = min(n_targets, logits.shape[1] - 1)
    order = logits.argsort(dim=1)
    fooled = logits.argmax(1) != y
    out = x.clone()
    for t in range(2, n_targets + 2):
        idx = (~fooled).nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        xa = apgd(model, x[idx], y[idx], norm, eps, steps, "dlr-targeted", order[idx, -t], seed=None if seed is None else seed + t)
        with torch.no_grad():
            wrong = model(xa).argmax(1) != y[idx]
        out[idx] = torch.where(wrong.view(-1, 1, 1, 1), xa, out[idx])
        fooled[idx[wrong]] = True
    return out


# --------------------------------------------------------------------------- black-box


def _p_schedule(p_init: float, it: int, n_iters: int) -> float:
    """Fraction of pixels changed per query, halved at the Square attack's fixed milestones
    (rescaled from a 10,000-query budget)."""
    it = int(it / n_iters * 10000)
    for bound, div in ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64), (6000, 128), (8000, 256)):
        if it <= bound:
            return p_init / div
    return p_init / 512


def _eta_rect(a: int, b: int, device) -> torch.Tensor:
    d = torch.zeros(a, b, device=device)
    r0, c0 = a // 2, b // 2
    for k in range(max(a // 2 + 1, b // 2 + 1)):
        d[max(r0 - k, 0) : min(r0 - k + 2 * k + 1, a), max(c0 - k, 0) : min(c0 - k + 2 * k + 1, b)] += 1.0 / (k + 1) ** 2
    return d / d.norm().clamp_min(1e-12)


def _eta(s: int, rng: random.Random, device) -> torch.Tensor:
    """The Square-l2 window pattern: nested squares, positive top half, negative bottom half."""
    d = torch.zeros(s, s, device=device)
    d[: s // 2] = _eta_rect(s // 2, s, device)
    d[s // 2 :] = -_eta_rect(s - s // 2, s, device)
    d = d / d.norm()
    return d.T if rng.random() > 0.5 else d


def square(model, x, y, norm: str, eps: float, queries: int = 1000, p_init: float = 0.8, seed: int = 0):
    """Square attack on the margin loss: random square-shaped updates accepted when they lower
    z_y - max_{j!=y} z_j; stops per example at misclassification.  One query = one forward."""
    check_threat(norm, eps)
    rng = random.Random(seed)
    gen = _gen(x, seed)
    n, c, h, w = x.shape
    n_feat = c * h * w

    def signs(shape):
        return torch.where(torch.rand(shape, device=x.device, generator=gen) < 0.5, -1.0, 1.0)

    def score(xa, yy):
        with torch.no_grad():
            return margin(model(xa), yy)

    if norm == "linf":
        x_best = (x + eps * signs((n, c, 1, w))).clamp(0, 1)
    else:
        s0 = h // 5
        start = (h - 5 * s0) // 2
        init = torch.zeros_like(x)
        for vh in range(start, start + 5 * s0, s0):
            for vw in range(start, start + 5 * s0, s0):
                init[:, :, vh : vh + s0, vw : vw + s0] += _eta(s0, rng, x.device).view(1, 1, s0, s0) * signs((n, c, 1, 1))
        x_best = (x + init / _bnorm(init).clamp_min(1e-12) * eps).clamp(0, 1)
    m_best = score(x_best, y)

    for it in range(queries):
        idx = (m_best > 0).nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        xc, xb, yc = x[idx], x_best[idx], y[idx]
        p = _p_schedule(p_init, it, queries)
        if norm == "linf":
            s = min(max(int(round(math.sqrt(p * n_feat / c))), 1), h)
            vh, vw = rng.randint(0, h - s), rng.randint(0, w - s)
            x_new = xb.clone()
            x_new[:, :, vh : vh + s, vw : vw + s] += 2 * eps * signs((len(idx), c, 1, 1))
            x_new = torch.min(torch.max(x_new, xc - eps), xc + eps).clamp(0, 1)
        else:
            s = max(int(round(math.sqrt(p * n_feat / c))), 3)
            s = min(s + (s % 2 == 0), h)
            vh, vw = rng.randint(0, h - s), rng.randint(0, w - s)
            vh2, vw2 = rng.randint(0, h - s), rng.randint(0, w - s)
            delta = xb - xc
            win1 = (slice(None), slice(None), slice(vh, vh + s), slice(vw, vw + s))
            win2 = (slice(None), slice(None), slice(vh2, vh2 + s), slice(vw2, vw2 + s))
            mask = torch.zeros_like(delta)
            mask[win1] = 1.0
            mask[win2] = 1.0
            norm_img = _bnorm(delta)
            norm_windows = _bnorm(delta * mask)
            old = delta[win1] / delta[win1].flatten(2).norm(dim=2).view(len(idx), c, 1, 1).clamp_min(1e-12)
            new = _eta(s, rng, x.device).view(1, 1, s, s) * signs((len(idx), c, 1, 1)) + old
            budget = ((eps**2 - norm_img**2).clamp_min(0) / c + norm_windows**2).sqrt()
            new = new / new.flatten(2).norm(dim=2).view(len(idx), c, 1, 1).clamp_min(1e-12) * budget
            delta[win2] = 0.0
            delta[win1] = new
            x_new = (xc + delta / _bnorm(delta).clamp_min(1e-12) * eps).clamp(0, 1)
        m_new = score(x_new, yc)
        accept = (m_new < m_best[idx]) | (m_new <= 0)
        m_best[idx] = torch.where(accept, m_new, m_best[idx])
        x_best[idx] = torch.where(accept.view(-1, 1, 1, 1), x_new, xb)
    return x_best
