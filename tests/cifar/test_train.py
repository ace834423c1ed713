"""The training loop: schedule, clean and adversarial steps, the overfitting guard, low-rank runs."""

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from cifar.augment import to_float
from cifar.lowrank import add_lowrank, delta_stats
from cifar.models import build_model, effective_weights
from cifar.runtime import Forward
from cifar.testing import synthetic_images
from cifar.train import OverfitGuard, TrainConfig, adversarial_batch, make_optimizer, one_cycle, train, train_step

torch.set_num_threads(1)


def _data(n, seed=0):
    x, y = synthetic_images(n, seed)
    return torch.from_numpy(x), torch.from_numpy(y)


def _model(seed=0):
    torch.manual_seed(seed)
    return Forward(build_model("small_cnn", widths=(8, 16, 16)))


def test_one_cycle_shape():
    lr = [one_cycle(s, 100, 0.2) for s in range(100)]
    assert lr[0] == pytest.approx(0.05) and max(lr) == 1.0 and lr.index(1.0) == 19
    assert all(a <= b for a, b in zip(lr[:20], lr[1:20])) and all(a >= b for a, b in zip(lr[19:], lr[20:]))
    assert lr[-1] == pytest.approx(1 / 80)


def test_clean_steps_lower_the_loss_on_a_batch():
    model = _model()
    x, y = _data(50)
    xf = to_float(x)
    cfg = TrainConfig(mode="clean", lr=0.05, weight_decay=0.0)
    opt = make_optimizer(model.parameters(), cfg)
    losses = [train_step(model, opt, xf, y, cfg)[0].item() for _ in range(15)]
    assert losses[-1] < 0.5 * losses[0]


def test_clean_training_generalises_on_synthetic_data():
    model = _model()
    x, y = _data(300)
    hist = train(model, x, y, TrainConfig(mode="clean", epochs=4, batch_size=50, lr=0.05, pad=2), progress=False)
    assert len(hist["epochs"]) == 4 and hist["steps"] == 24
    assert hist["epochs"][-1]["loss"] < hist["epochs"][0]["loss"]
    xt, yt = _data(200, seed=9)
    model.eval()
    with torch.no_grad():
        acc = (model(to_float(xt)).argmax(1) == yt).float().mean().item()
    assert acc > 0.8


@pytest.mark.parametrize("mode", ["pgd", "fgsm"])
def test_adversarial_step_uses_harder_inputs_and_updates(mode):
    model = _model()
    x, y = _data(300)
    train(model, x, y, TrainConfig(mode="clean", epochs=3, batch_size=50, lr=0.05), progress=False)
    cfg = TrainConfig(mode=mode, eps=8 / 255, steps=3, lr=0.01)
    xb, yb = to_float(x[:50]), y[:50]
    model.train()
    xa = adversarial_batch(model, xb, yb, cfg)
    assert (xa - xb).abs().max() <= cfg.eps + 1e-6
    model.eval()
    with torch.no_grad():
        assert F.cross_entropy(model(xa), yb) > F.cross_entropy(model(xb), yb)
    before = [p.detach().clone() for p in model.parameters()]
    opt = make_optimizer(model.parameters(), cfg)
    loss, acc = train_step(model, opt, xb, yb, cfg)
    assert torch.isfinite(loss) and 0 <= acc <= 1
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_guard_restores_best_weights_on_collapse():
    model = _model()
    x, y = _data(20)
    guard = OverfitGuard(model, to_float(x), y, TrainConfig(mode="fgsm", guard_drop=0.2))
    assert not guard.update(0.40, 0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    assert not guard.update(0.45, 1)  # new best: these weights are kept
    best = {k: v.clone() for k, v in model.state_dict().items()}
    assert not guard.update(0.30, 2)  # a dip within guard_drop is tolerated
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.0)
    assert guard.update(0.10, 3)  # collapse
    assert all(torch.equal(v, best[k]) for k, v in model.state_dict().items())
    assert guard.events[-1]["restored_best"] == 0.45


def test_fgsm_training_runs_guard_checks():
    model = _model()
    x, y = _data(200)
    cfg = TrainConfig(mode="fgsm", epochs=2, batch_size=50, lr=0.02, guard_checks_per_epoch=2, guard_n=50, guard_steps=2)
    hist = train(model, x, y, cfg, progress=False)
    assert [e["step"] for e in hist["guard"]][:1] == [0] and len(hist["guard"]) >= 4
    assert all(0 <= e["pgd_acc"] <= 1 for e in hist["guard"])


def test_lowrank_adversarial_training_moves_only_the_factors():
    model = _model()
    x, y = _data(200)
    train(model, x, y, TrainConfig(mode="clean", epochs=2, batch_size=50, lr=0.05), progress=False)
    clean_w = effective_weights(model)
    params = add_lowrank(model, 2, train_vectors=False)
    originals = {n: m.parametrizations.weight.original.detach().clone() for n, m in model.net.named_modules() if hasattr(m, "parametrizations")}
    cfg = TrainConfig(mode="pgd", steps=2, epochs=1, batch_size=50, lr=0.05, guard=False)
    train(model, x, y, cfg, params=params, progress=False)
    for n, m in model.net.named_modules():
        if hasattr(m, "parametrizations"):
            assert torch.equal(m.parametrizations.weight.original, originals[n])
    stats = delta_stats(model)
    assert all(s["numerical_rank"] == 2 and s["relative_update"] > 0 for s in stats.values())
    moved = effective_weights(model)
    assert any(not torch.equal(moved[k], clean_w[k]) for k in clean_w)


def test_budget_that_does_not_bind_changes_nothing():
    x, y = _data(200)
    cfg = TrainConfig(mode="clean", epochs=2, batch_size=50, lr=0.05, pad=2)
    a, b = _model(), _model()
    ha = train(a, x, y, cfg, progress=False)
    hb = train(b, x, y, replace(cfg, budget_s=1e6), progress=False)
    assert not ha["budget_stopped"] and not hb["budget_stopped"] and ha["steps"] == hb["steps"] == hb["steps_planned"] == 8
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


class FakeClock:
    """Each read advances one second."""

    def __init__(self):
        self.t = -1.0

    def __call__(self):
        self.t += 1.0
        return self.t


@pytest.mark.parametrize("mode", ["clean", "fgsm"])
def test_budget_stops_with_the_schedule_annealed(mode):
    x, y = _data(200)
    # 40 planned steps, 10 s budget, 1 s per step: the effective step runs 4x faster than the real one
    cfg = TrainConfig(mode=mode, epochs=10, batch_size=50, lr=0.1, warmup=0.2, guard_n=50, guard_steps=2, budget_s=10)
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hist = train(model, x, y, cfg, progress=False, clock=FakeClock())
    assert hist["budget_stopped"] and hist["steps_planned"] == 40 and hist["steps"] == 10
    assert [e["steps"] for e in hist["epochs"]] == [4, 4, 2] and hist["epochs"][-1]["epoch"] == 3
    assert hist["epochs"][-1]["lr_last"] == pytest.approx(0.1 * one_cycle(36, 40, 0.2))  # step 9 ran at effective step 36
    assert any(not torch.equal(v, before[k]) for k, v in model.state_dict().items())
    if mode == "fgsm":
        assert hist["guard"][-1]["step"] == 10  # a final guard check where the budget stopped it


def test_budget_is_validated():
    with pytest.raises(ValueError, match="budget_s must be a positive number"):
        TrainConfig(budget_s=0).validate()


def test_config_validation_names_parameters():
    with pytest.raises(ValueError, match="mode must be one of"):
        TrainConfig(mode="trades").validate()
    with pytest.raises(ValueError, match="eps for norm 'linf'"):
        TrainConfig(mode="pgd", eps=2.0).validate()
    with pytest.raises(ValueError, match="pad_mode"):
        TrainConfig(pad_mode="wrap").validate()
    TrainConfig(mode="clean", eps=2.0).validate()  # eps is irrelevant to clean training
