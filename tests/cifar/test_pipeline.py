"""The smoke preset end to end on a fake JPEG archive, and the command line's errors."""

import json
from dataclasses import replace

import pytest
import torch

from cifar.cli import main
from cifar.pipeline import PRESETS, get_preset, run
from cifar.testing import write_fake_jpeg_npz
from sim.common.validation import ConfigError


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    root = tmp_path_factory.mktemp("smoke")
    npz = root / "data" / "cifar10-jpeg-q75.npz"
    # low contrast: learnable, yet breakable at 8/255, so the attacks have work to do and stop early
    write_fake_jpeg_npz(npz, n_train=600, n_test=120, contrast=0.1)
    threads = torch.get_num_threads()
    report = run("smoke", root / "out", data=npz, cache=root / "cache", device="cpu", quiet=True)
    assert torch.get_num_threads() == threads  # restored after the run
    return root / "out", report


def test_smoke_writes_complete_report(smoke):
    out, report = smoke
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["preset"] == "smoke" and on_disk["runtime"]["device"] == "cpu"
    assert set(on_disk["results"]) == {"clean", "adv_ft_full", "adv_ft_rank1", "adv_ft_rank4", "adv_scratch"}
    for name, res in on_disk["results"].items():
        assert 0 <= res["clean_acc"] <= 1
        assert set(res["pgd"]) == {"linf 8/255", "l2 0.5"}
        assert res["ensemble"]["robust_acc"] <= res["ensemble"]["clean_acc"]
        assert ("masking" in res) == (name != "clean")
    # training happened: the synthetic classes are learnable
    assert on_disk["results"]["clean"]["clean_acc"] > 0.5
    assert {k for k in on_disk["timings_s"]} >= {"data", "train:clean", "train:adv_scratch", "eval:clean", "measures", "figures"}
    assert on_disk["lowrank"]["adv_ft_rank1"]["trainable_params"] < on_disk["lowrank"]["adv_ft_rank4"]["trainable_params"]
    assert all(v["numerical_rank"] <= 1 for v in on_disk["lowrank"]["adv_ft_rank1"]["layers"].values())
    assert on_disk["data"]["checksum_verified"] and "JPEG" in on_disk["data"]["caveat"]
    for name in ("adv_ft_full", "adv_ft_rank1", "adv_scratch"):
        o = on_disk["purification"][name]["overall"]
        assert 0 <= o["share_dominated"] <= 1 and o["neurons"] == sum(r["neurons"] for r in on_disk["purification"][name]["layers"])
    md = (out / "report.md").read_text()
    assert "JPEG (quality 75)" in md and "Smoke preset" in md and "## Purification" in md and "## Timings" in md
    for rel in on_disk["figures"].values():
        assert (out / rel).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "checkpoints/clean_init.pt" in on_disk["checkpoints"]
    init = torch.load(out / "checkpoints" / "clean_init.pt")
    final = torch.load(out / "checkpoints" / "clean_final.pt")
    assert init.keys() == final.keys() and not torch.equal(init["linear.weight"], final["linear.weight"])
    assert (out / "measures" / "adv_scratch.npz").is_file()
    assert not list(out.rglob("*.tmp"))


def test_a_folder_of_another_run_is_refused_and_overwrite_clears_only_runs(smoke, tmp_path):
    """sim's rule for run folders (sim.common.outdir): a finished run's folder is refused with
    a message naming it and --overwrite; a folder of other files is never cleared."""
    out, _ = smoke
    npz = out.parent / "data" / "cifar10-jpeg-q75.npz"
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    with pytest.raises(ConfigError, match="--overwrite"):
        run("smoke", out, data=npz, cache=out.parent / "cache", device="cpu", quiet=True, seed=1)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    with pytest.raises(ConfigError, match="not a run"):
        run("smoke", other, data=npz, cache=out.parent / "cache", device="cpu", quiet=True, overwrite=True)
    assert (other / "notes.txt").read_text() == "keep"


def test_budgets_stop_stages_and_the_report_says_so(tmp_path):
    """Budgets so small that every budgeted stage stops at once: the run still completes,
    every number says what it covers, and the report flags each stopped stage."""
    npz = tmp_path / "data" / "cifar10-jpeg-q75.npz"
    write_fake_jpeg_npz(npz, n_train=200, n_test=60, contrast=0.1)
    p = get_preset("smoke")
    p.n_train, p.n_test, p.adv_scratch, p.ranks = 200, 60, None, (2,)
    p.clean = replace(p.clean, epochs=2)
    p.adv_finetune = replace(p.adv_finetune, epochs=2, budget_s=1e-3)
    p.eval_batch, p.ensemble_batch, p.eval_budget_s = 20, 16, 1e-3
    report = run(p, tmp_path / "out", data=npz, cache=tmp_path / "cache", device="cpu", quiet=True)
    assert report["budget_stopped"] == sorted(["train:adv_ft_full", "train:adv_ft_rank2", "eval:clean", "eval:adv_ft_full", "eval:adv_ft_rank2"])
    for name in ("adv_ft_full", "adv_ft_rank2"):
        h = report["training"][name]
        assert h["budget_stopped"] and h["steps"] == 1 and h["steps_planned"] == 8  # one step, then the budget is spent
        res = report["results"][name]
        assert res["pgd_n"]["linf 8/255"] == 20 and res["ensemble"]["n"] == 16  # the first chunk, whole
        assert res["skipped"] == ["masking checks", "PGD l2 0.5"] and res["pgd"]["l2 0.5"] is None and "masking" not in res
    assert not report["training"]["clean"]["budget_stopped"] and report["budgets"]["train:clean"]["budget_s"] is None
    md = (tmp_path / "out" / "report.md").read_text()
    assert md.count("BUDGET: ") == 5 and "(n=20)" in md and "Skipped when the evaluation budget ran out" in md
    assert "radius" not in report["figures"] and set(report["figures"]) == {"filters", "share", "lowrank"}


@pytest.mark.parametrize("name", ["gpu", "tiny"])
def test_stage_budgets_fit_the_whole_budget(name):
    """Training budgets plus the robust models' evaluation budgets leave >= 30 s of the preset's
    budget for data, the clean model's evaluation (cheap: PGD breaks it at once), measures, figures."""
    p = get_preset(name)
    staged = p.clean.budget_s + p.adv_finetune.budget_s + len(p.ranks) * p.lowrank_config().budget_s + (1 + len(p.ranks)) * p.eval_budget_s
    assert staged <= p.budget_s - 30, staged


def test_presets_and_overrides():
    assert set(PRESETS) == {"smoke", "tiny", "fast", "gpu"}
    gpu = get_preset("gpu")
    assert gpu.model == "preact_resnet18" and gpu.clean_target == 0.93 and gpu.pgd_steps == 50 and gpu.expects_gpu
    assert gpu.ranks == (1, 4, 16) and gpu.adv_finetune.mode == "fgsm" and gpu.pgd_restarts >= 2
    p = get_preset("smoke", norm="l2")
    assert p.threat == ("l2", 0.5) and p.adv_scratch.norm == "l2"
    assert get_preset("smoke", ranks=(1, 2, 4, 8, 16)).ranks == (1, 2, 4, 8, 16)
    assert get_preset("smoke", adv_mode="fgsm").adv_finetune.mode == "fgsm"
    with pytest.raises(ValueError, match="preset must be one of"):
        get_preset("huge")
    with pytest.raises(ValueError, match="eps for norm 'linf'"):
        get_preset("smoke", eps=3.0)
    with pytest.raises(ValueError, match="ranks"):
        get_preset("smoke", ranks=(0,))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU refusal")
def test_gpu_preset_refuses_cpu_unless_asked(tmp_path):
    with pytest.raises(ValueError, match="--device cpu"):
        run("gpu", tmp_path / "out", device="auto", quiet=True)
    assert not (tmp_path / "out").exists()


def test_cli_errors_are_clear(tmp_path, capsys, monkeypatch):
    # a tiny archive, so that the checks of the other arguments do not depend on finding CIFAR-10
    write_fake_jpeg_npz(tmp_path / "fake" / "cifar10-jpeg-q75.npz", n_train=20, n_test=10)
    monkeypatch.setenv("CIFAR10_DATA", str(tmp_path / "fake" / "cifar10-jpeg-q75.npz"))
    with pytest.raises(SystemExit) as e:
        main(["run", "--preset", "nope", "--out", str(tmp_path)])
    assert e.value.code == 2 and "invalid choice: 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["run", "--preset", "smoke", "--out", str(tmp_path), "--eps", "eight"])
    assert "eps must be a number" in capsys.readouterr().err
    assert main(["run", "--preset", "smoke", "--out", str(tmp_path), "--eps", "2"]) == 2
    assert "eps for norm 'linf' must be" in capsys.readouterr().err
    missing = tmp_path / "no-such-data"
    assert main(["run", "--preset", "smoke", "--out", str(tmp_path / "o"), "--data", str(missing), "--quiet"]) == 2
    assert str(missing) in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["run", "--preset", "smoke", "--out", str(tmp_path), "--ranks", "1,x"])
    assert "ranks must be" in capsys.readouterr().err
    assert main(["presets"]) == 0 and "smoke" in capsys.readouterr().out
