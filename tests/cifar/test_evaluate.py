"""Evaluation: the AutoAttack-style ensemble and the gradient-masking checks."""

import pytest
import torch
from torch import nn

from cifar.evaluate import (
    Deadline, EnsembleConfig, MaskingConfig, check_adversarial, clean_accuracy, ensemble_attack, masking_checks, pgd_accuracy, pgd_eval, threat_key,
)
from cifar.testing import trained_tiny_model

torch.set_num_threads(1)


class Quantised(nn.Module):
    """Rounds its input to 8 grey levels: gradients vanish, the decision does not."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(torch.round(x * 7) / 7)


@pytest.fixture(scope="module")
def trained():
    model, x, y = trained_tiny_model()
    return model, (x[:64] * 255).round().to(torch.uint8), y[:64]


def test_ensemble_is_monotone_and_accounts_for_every_point(trained):
    model, x, y = trained
    eps = 12 / 255
    r = ensemble_attack(model, x, y, "linf", eps, EnsembleConfig(n=64, apgd_steps=10, n_targets=2, square_queries=30), batch_size=32)
    assert r["n"] == 64
    assert r["clean_acc"] == pytest.approx(clean_accuracy(model, x, y))
    seq = [r["clean_acc"]] + [r["after"][k] for k in ("apgd-ce", "apgd-t", "square")]
    assert all(a >= b for a, b in zip(seq, seq[1:])) and r["robust_acc"] == seq[-1]
    assert round((r["clean_acc"] - r["robust_acc"]) * 64) == sum(r["broken_by"].values())
    assert r["robust_acc"] <= pgd_accuracy(model, x, y, "linf", eps, steps=10) + 0.05
    assert r["robust_acc"] < r["clean_acc"]


def expired_after_first_read():
    """A Deadline whose clock jumps past the end after it is created."""
    times = iter([0.0] + [100.0] * 100)
    return Deadline(1.0, clock=lambda: next(times))


def test_deadline_truncates_points_not_attacks(trained):
    model, x, y = trained
    eps = 12 / 255
    cut = pgd_eval(model, x, y, "linf", eps, steps=5, batch_size=32, deadline=expired_after_first_read())
    full = pgd_eval(model, x[:32], y[:32], "linf", eps, steps=5, batch_size=32)
    assert cut["n"] == 32 and cut["n_planned"] == 64 and cut["budget_stopped"]
    assert cut["acc"] == full["acc"] and not full["budget_stopped"]  # the first chunk got the full attack
    cfg = EnsembleConfig(n=64, apgd_steps=5, n_targets=2, square_queries=10)
    e_cut = ensemble_attack(model, x, y, "linf", eps, cfg, batch_size=32, deadline=expired_after_first_read())
    e_full = ensemble_attack(model, x[:32], y[:32], "linf", eps, cfg, batch_size=32)
    assert e_cut["n"] == 32 and e_cut["n_planned"] == 64 and e_cut["budget_stopped"]
    assert {k: e_cut[k] for k in ("clean_acc", "after", "broken_by", "robust_acc")} == {k: e_full[k] for k in ("clean_acc", "after", "broken_by", "robust_acc")}
    assert not Deadline(None).expired() and not Deadline(1e6).expired()


def test_masking_checks_pass_a_plain_model(trained):
    model, x, y = trained
    m = masking_checks(model, x, y, "linf", 8 / 255, MaskingConfig(n=48, pgd_steps=10, square_queries=50, radii=(1.0, 4.0, 8.0)))
    assert m["zero_gradient_share"] == 0.0
    assert not m["suspicious"], m["flags"]
    assert m["radius_curve"][0]["radius"] == 0 and m["radius_curve"][-1]["acc"] <= 0.1


def test_masking_checks_flag_masked_gradients(trained):
    model, x, y = trained
    masked = Quantised(model).eval()
    m = masking_checks(masked, x, y, "linf", 24 / 255, MaskingConfig(n=48, pgd_steps=10, square_queries=50, radii=(1.0, 4.0)))
    assert m["zero_gradient_share"] == 1.0 and m["flags"]["zero_gradients"]
    assert m["flags"]["blackbox_beats_whitebox"], m
    assert m["suspicious"]


def test_adversarial_checks_catch_bugs():
    x = torch.rand(4, 3, 32, 32) * 0.5
    check_adversarial(x + 8 / 255, x, "linf", 8 / 255)
    with pytest.raises(RuntimeError, match="exceeds eps"):
        check_adversarial(x + 9 / 255, x, "linf", 8 / 255, "buggy")
    with pytest.raises(RuntimeError, match=r"outside \[0, 1\]"):
        check_adversarial(x - 0.6, x - 0.6 + 1e-3, "linf", 8 / 255)
    assert threat_key("linf", 8 / 255) == "linf 8/255" and threat_key("l2", 0.5) == "l2 0.5"
