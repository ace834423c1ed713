"""Attacks: inside the ball and the box, effective, PGD at least as strong as FGSM."""

import math

import pytest
import torch
import torch.nn.functional as F

from cifar.attacks import (
    apgd,
    apgd_targeted,
    check_threat,
    dlr_loss,
    fgsm,
    margin,
    parse_eps,
    perturbation_norms,
    pgd,
    square,
)
from cifar.models import build_model
from cifar.runtime import Forward
from cifar.testing import trained_tiny_model

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def trained():
    model, x, y = trained_tiny_model()
    return model, x[:100], y[:100]


def _acc(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


ATTACKS = {
    "pgd": lambda m, x, y, n, e: pgd(m, x, y, n, e, steps=3, restarts=2, seed=0),
    "pgd-train": lambda m, x, y, n, e: pgd(m, x, y, n, e, steps=3, track=False),
    "fgsm": lambda m, x, y, n, e: fgsm(m, x, y, n, e, seed=0),
    "fgsm-no-rs": lambda m, x, y, n, e: fgsm(m, x, y, n, e, random_init=False),
    "apgd-ce": lambda m, x, y, n, e: apgd(m, x, y, n, e, steps=5),
    "apgd-dlr": lambda m, x, y, n, e: apgd(m, x, y, n, e, steps=5, loss="dlr"),
    "apgd-t": lambda m, x, y, n, e: apgd_targeted(m, x, y, n, e, steps=5, n_targets=2),
    "square": lambda m, x, y, n, e: square(m, x, y, n, e, queries=20),
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
@pytest.mark.parametrize("norm,eps", [("linf", 8 / 255), ("l2", 0.5)])
def test_perturbations_stay_in_ball_and_box(name, norm, eps):
    torch.manual_seed(0)
    model = Forward(build_model("small_cnn", widths=(4, 8, 8))).eval()
    x = torch.rand(12, 3, 32, 32)
    x[:4] = x[:4].round()  # pixels at 0 and 1: the box constraint binds
    with torch.no_grad():
        y = model(x).argmax(1)  # every point correctly classified: every attack has work to do
    xa = ATTACKS[name](model, x, y, norm, eps)
    assert xa.shape == x.shape and torch.isfinite(xa).all()
    assert xa.min() >= 0 and xa.max() <= 1
    assert perturbation_norms(xa, x, norm).max() <= eps * (1 + 1e-5) + 1e-6
    moved = (xa - x).abs().amax(dim=(1, 2, 3)) > 0
    if name == "apgd-t":  # returns x itself where no target class was reached (as AutoAttack)
        with torch.no_grad():
            assert torch.equal(moved, model(xa).argmax(1) != y)
    else:
        assert moved.all()


@pytest.mark.parametrize("norm,eps", [("linf", 12 / 255), ("l2", 1.5)])
def test_pgd_at_least_as_strong_as_fgsm(trained, norm, eps):
    model, x, y = trained
    clean = _acc(model, x, y)
    acc_fgsm = _acc(model, fgsm(model, x, y, norm, eps, seed=0), y)
    acc_pgd = _acc(model, pgd(model, x, y, norm, eps, steps=10, seed=0), y)
    assert acc_pgd <= acc_fgsm <= clean
    assert acc_pgd < clean - 0.1, "PGD should break a non-robust model at this radius"
    loss = lambda xa: F.cross_entropy(model(xa), y).item()  # noqa: E731
    with torch.no_grad():
        xf = fgsm(model, x, y, norm, eps, seed=0)
    xp = pgd(model, x, y, norm, eps, steps=10, track=False, seed=0)
    with torch.no_grad():
        assert loss(xp) >= loss(xf) > loss(x)


def test_tracked_pgd_returns_misclassified_points_and_apgd_is_strong(trained):
    model, x, y = trained
    eps = 12 / 255
    xa = pgd(model, x, y, "linf", eps, steps=10, restarts=2, seed=1)
    acc_pgd = _acc(model, xa, y)
    acc_apgd = _acc(model, apgd(model, x, y, "linf", eps, steps=20), y)
    assert acc_apgd <= acc_pgd + 0.05
    acc_t = _acc(model, apgd_targeted(model, x, y, "linf", eps, steps=20, n_targets=3), y)
    assert acc_t < _acc(model, x, y) - 0.1


def test_square_black_box_breaks_at_large_radius(trained):
    model, x, y = trained
    xa = square(model, x, y, "linf", 48 / 255, queries=100)
    assert _acc(model, xa, y) < _acc(model, x, y) - 0.2


def test_losses():
    z = torch.tensor([[3.0, 1.0, 0.5, 0.0, -1.0], [0.0, 2.0, 1.0, 0.0, 0.0]])
    y = torch.tensor([0, 0])
    torch.testing.assert_close(dlr_loss(2 * z + 5, y), dlr_loss(z, y))  # scale and shift invariant
    m = margin(z, y)
    assert m[0] == 2.0 and m[1] == -2.0
    assert (m < 0).tolist() == (z.argmax(1) != y).tolist()


def test_threat_validation_names_parameters():
    check_threat("linf", 8 / 255)
    with pytest.raises(ValueError, match="norm must be one of"):
        check_threat("l1", 0.1)
    for bad in (0, -0.1, 1.5, math.nan, "8/255"):
        with pytest.raises(ValueError, match="eps for norm 'linf'"):
            check_threat("linf", bad)
    with pytest.raises(ValueError, match="eps"):
        pgd(None, torch.zeros(1, 3, 32, 32), torch.zeros(1, dtype=torch.long), "l2", 100.0)
    assert parse_eps("8/255") == 8 / 255 and parse_eps("0.5") == 0.5
    with pytest.raises(ValueError, match="eps"):
        parse_eps("eight")
