"""The GPU paths (bf16 autocast, channels_last, data and augmentation on the device, the
time budgets' CUDA clock, every attack, low-rank factors, the whole pipeline), run first by
scripts/cifar_gpu_run.sh so that a GPU session learns in seconds what would break its run.
Marked ``cuda``; skipped without a CUDA device. About half a minute on one GPU."""

import json
from dataclasses import replace

import pytest
import torch

from sim.common.validation import ConfigError

from cifar.attacks import apgd, apgd_targeted, fgsm, pgd, square
from cifar.augment import augment, to_float
from cifar.evaluate import check_adversarial, clean_accuracy
from cifar.lowrank import add_lowrank, delta_stats, lowrank_modules
from cifar.models import build_model
from cifar.pipeline import get_preset, run
from cifar.runtime import Runtime
from cifar.testing import synthetic_images, write_fake_jpeg_npz
from cifar.train import TrainConfig, train

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture(scope="module")
def rt():
    return Runtime.create("cuda")


@pytest.fixture(scope="module")
def data(rt):
    x, y = synthetic_images(1000, seed=0, contrast=0.2)
    return torch.from_numpy(x).to(rt.device), torch.from_numpy(y).to(rt.device)


@pytest.fixture(scope="module")
def trained(rt, data):
    torch.manual_seed(0)
    model = rt.wrap(build_model("small_cnn", widths=(16, 32, 32)))
    hist = train(model, *data, TrainConfig(mode="clean", epochs=4, batch_size=100, lr=0.05, pad=2), progress=False)
    return model, hist


def test_runtime_defaults_on_cuda(rt):
    assert rt.device.type == "cuda" and rt.amp and rt.channels_last and torch.backends.cudnn.benchmark
    info = rt.describe()
    assert info["gpu"] and info["cuda"] and info["cudnn"] and info["gpu_memory_gib"] > 1
    with rt.autotune(False):
        assert not torch.backends.cudnn.benchmark
    assert torch.backends.cudnn.benchmark
    with pytest.raises(ConfigError, match="CUDA device"):
        Runtime.create(f"cuda:{torch.cuda.device_count()}")


def test_augment_on_the_device(rt, data):
    x = data[0][:64]
    g = torch.Generator(device=rt.device).manual_seed(0)
    out = augment(x, 4, True, "zeros", g)
    assert out.device.type == "cuda" and out.dtype == torch.float32 and out.shape == x.shape
    assert 0 <= out.min() and out.max() <= 1
    assert torch.equal(augment(x, 0, False), to_float(x))


def test_bf16_training_learns_and_logits_are_fp32(rt, data, trained):
    model, hist = trained
    assert hist["epochs"][-1]["loss"] < hist["epochs"][0]["loss"]
    x, y = data
    model.eval()
    with torch.no_grad():
        logits = model(to_float(x[:100]))
    assert logits.dtype == torch.float32
    assert clean_accuracy(model, x, y, 250) > 0.8  # synthetic classes are easy


def test_time_budget_stops_on_cuda(rt, data):
    torch.manual_seed(0)
    model = rt.wrap(build_model("small_cnn", widths=(16, 32, 32)))
    cfg = TrainConfig(mode="fgsm", epochs=200, batch_size=100, lr=0.05, guard_n=100, guard_steps=3, budget_s=1.0)
    hist = train(model, *data, cfg, progress=False)
    assert hist["budget_stopped"] and 0 < hist["steps"] < hist["steps_planned"] == 2000
    assert hist["seconds"] < 5.0


@pytest.mark.parametrize("norm,eps", [("linf", 8 / 255), ("l2", 0.5)])
def test_attacks_stay_in_the_ball_in_fp32(rt, data, trained, norm, eps):
    model, _ = trained
    model.eval()
    model.amp = False
    x, y = to_float(data[0][:100]), data[1][:100]
    for name, xa in [
        ("fgsm", fgsm(model, x, y, norm, eps, seed=0)),
        ("pgd", pgd(model, x, y, norm, eps, steps=10, restarts=2, seed=0)),
        ("apgd", apgd(model, x, y, norm, eps, steps=10)),
        ("apgd-t", apgd_targeted(model, x, y, norm, eps, steps=10, n_targets=2)),
        ("square", square(model, x, y, norm, eps, queries=50)),
    ]:
        assert xa.device.type == "cuda"
        check_adversarial(xa, x, norm, eps, name)
    model.amp = True


def test_lowrank_on_cuda_matches_the_cpu(rt, data):
    torch.manual_seed(0)
    model = rt.wrap(build_model("small_cnn", widths=(16, 32, 32)))
    params = add_lowrank(model, 4, seed=1)
    train(model, *data, TrainConfig(mode="fgsm", epochs=1, batch_size=100, lr=0.05, guard=False), params=params, progress=False)
    on_gpu = delta_stats(model)
    assert all(v["numerical_rank"] == 4 for v in on_gpu.values())
    for name, lr in lowrank_modules(model).items():
        d = lr.delta().detach().float().cpu()
        assert on_gpu[name]["numerical_rank"] == int(torch.linalg.matrix_rank(d).item())


def test_pipeline_end_to_end_on_cuda(tmp_path):
    """The smoke preset's every stage on the GPU, with budgets that stop some of them."""
    npz = tmp_path / "data" / "cifar10-jpeg-q75.npz"
    write_fake_jpeg_npz(npz, n_train=600, n_test=120, contrast=0.1)
    p = get_preset("smoke")
    p.adv_finetune = replace(p.adv_finetune, mode="fgsm", budget_s=1e-3)  # spent by the first guard check: one step
    p.eval_budget_s, p.eval_amp, p.ensemble_batch = 2.0, False, 24
    report = run(p, tmp_path / "out", data=npz, cache=tmp_path / "cache", device="cuda", quiet=True)
    on_disk = json.loads((tmp_path / "out" / "report.json").read_text())
    assert on_disk["runtime"]["device"].startswith("cuda") and on_disk["runtime"]["amp_bf16"]
    assert "train:adv_ft_full" in report["budget_stopped"]
    assert set(on_disk["results"]) == {"clean", "adv_ft_full", "adv_ft_rank1", "adv_ft_rank4", "adv_scratch"}
    assert all(0 <= r["clean_acc"] <= 1 for r in on_disk["results"].values())
    assert (tmp_path / "out" / "figures" / "filters.png").is_file() and (tmp_path / "out" / "report.md").is_file()
