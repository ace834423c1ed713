"""Models and the low-rank parametrisation W = W_clean + U V^T."""

import pytest
import torch

from cifar.lowrank import add_lowrank, delta_stats, is_lowrank, lowrank_modules, merge_lowrank
from cifar.models import build_model, effective_weights, weight_layers
from cifar.runtime import Forward, Runtime

torch.set_num_threads(1)


def _x(n=4, seed=0):
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_preact_resnet18_is_the_standard_size():
    m = build_model("preact_resnet18")
    # PreActResNet-18 with the final BN-ReLU (He et al. 2016; Rice et al. 2020): 11,171,146
    # parameters without that BatchNorm(512), plus its 2 x 512 affine parameters
    assert sum(p.numel() for p in m.parameters()) == 11_171_146 + 1024
    assert len(weight_layers(m)) == 21  # 1 stem + 16 block convs + 3 shortcuts + linear
    m.eval()
    assert m(_x(2)).shape == (2, 10)


def test_small_cnn_and_unknown_model():
    assert build_model("small_cnn", widths=(8, 16, 16))(_x(3)).shape == (3, 10)
    with pytest.raises(ValueError, match="model must be one of"):
        build_model("resnet50")


def test_forward_wrapper_channels_last_matches():
    net = build_model("small_cnn", widths=(8, 16, 16)).eval()
    x = _x()
    plain = Forward(net)(x)
    cl = Runtime(torch.device("cpu"), amp=False, channels_last=True).wrap(net)(x)
    torch.testing.assert_close(plain, cl, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name,kw", [("small_cnn", {"widths": (8, 16, 16)}), ("preact_resnet18", {"width": 8})])
def test_lowrank_is_exact_at_init_and_trains_only_factors(name, kw):
    torch.manual_seed(0)
    net = build_model(name, **kw).eval()
    x = _x()
    with torch.no_grad():
        before = net(x)
    base = {k: v.clone() for k, v in effective_weights(net).items()}
    params = add_lowrank(net, 3, seed=1)
    assert is_lowrank(net)
    with torch.no_grad():
        after = net(x)
    assert torch.equal(before, after), "U = 0 must reproduce the clean model exactly"
    for k, w in effective_weights(net).items():
        assert torch.equal(w, base[k])
    n_layers = len(weight_layers(net))
    factors = [p for p in params if p.dim() == 2]
    assert len(factors) == 2 * n_layers
    frozen = [m.parametrizations.weight.original for _, m in weight_layers(net)]
    assert all(not w.requires_grad for w in frozen)
    trainable = {id(p) for p in net.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in params}


def test_lowrank_update_has_rank_r_and_merge_keeps_function():
    torch.manual_seed(0)
    net = build_model("small_cnn", widths=(8, 16, 16)).eval()
    params = add_lowrank(net, 2, seed=0, train_vectors=False)
    assert all(p.dim() == 2 for p in params)
    with torch.no_grad():
        for lr in lowrank_modules(net).values():
            lr.U.normal_()
    stats = delta_stats(net)
    # the first layer has fan_in 27 and 8 outputs; rank 2 fits everywhere
    assert all(s["numerical_rank"] == 2 and s["rank"] == 2 for s in stats.values())
    x = _x()
    with torch.no_grad():
        out = net(x)
        w = effective_weights(net)
    merge_lowrank(net)
    assert not is_lowrank(net)
    with torch.no_grad():
        torch.testing.assert_close(net(x), out)
    for k, v in effective_weights(net).items():
        torch.testing.assert_close(v, w[k])


def test_lowrank_rank_is_capped_and_validated():
    net = build_model("small_cnn", widths=(8, 16, 16))
    add_lowrank(net, 64)
    ranks = {k: m.rank for k, m in lowrank_modules(net).items()}
    assert ranks["linear"] == 10 and ranks["features.0.0"] == 8  # min(out, fan_in)
    with pytest.raises(ValueError, match="already"):
        add_lowrank(net, 1)
    with pytest.raises(ValueError, match="rank"):
        add_lowrank(build_model("small_cnn"), 0)


def test_bf16_autocast_and_channels_last_path_runs_on_cpu():
    """The GPU settings (bf16 autocast, channels_last) through the low-rank code, on the CPU."""
    from cifar.train import TrainConfig, make_optimizer, train_step

    torch.manual_seed(0)
    model = Runtime(torch.device("cpu"), amp=True, channels_last=True).wrap(build_model("preact_resnet18", width=8)).eval()
    x = _x(8)
    with torch.no_grad():
        before = model(x)
    params = add_lowrank(model, 2)
    with torch.no_grad():
        assert torch.equal(model(x), before) and before.dtype == torch.float32
    cfg = TrainConfig(mode="pgd", steps=1, lr=0.1)
    loss, _ = train_step(model, make_optimizer(params, cfg), x, torch.arange(8) % 10, cfg)
    assert torch.isfinite(loss)
    assert all(s["numerical_rank"] == 2 for s in delta_stats(model).values())


def test_runtime_device_validation():
    assert Runtime.create("cpu").device.type == "cpu"
    with pytest.raises(ValueError, match="device must be one of"):
        Runtime.create("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            Runtime.create("cuda")


def test_delta_stats_from_factors_match_the_full_matrix():
    net = build_model("small_cnn", widths=(8, 16, 16))
    add_lowrank(net, 4, seed=1)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for i, lr in enumerate(lowrank_modules(net).values()):
            lr.U.copy_(torch.randn(lr.U.shape, generator=gen))
            if i % 2:
                lr.U[:, -1] = 0.0  # one direction unused: rank 3
    stats = delta_stats(net)
    for name, lr in lowrank_modules(net).items():
        d = lr.delta().detach().float()
        w0 = dict(net.named_modules())[name].parametrizations.weight.original
        assert stats[name]["numerical_rank"] == int(torch.linalg.matrix_rank(d).item())
        assert stats[name]["relative_update"] == pytest.approx(float(d.norm() / w0.norm()), rel=1e-5)
    assert sorted({s["numerical_rank"] for s in stats.values()}) == [3, 4]

