"""What each part of a CIFAR run costs, measured at small scale, as the basis of the time
budgets of the ``gpu`` preset (docs/cifar_gpu_budget.md).

    nice -n 10 python scripts/cifar_costs.py --threads 1 --json costs.json     # CPU, ~2 min
    python scripts/cifar_costs.py --device cuda --batch 512 --reps 10          # on a GPU

Per image it times one step of each kind on PreActResNet-18 (the gpu preset's model) with
the pipeline's own code: a clean training step, an FGSM-RS training step (full and rank-16
low-rank), a PGD iteration and a forward pass in evaluation (the unit of Square), and the
fixed costs that do not scale with the data (purification measures, low-rank statistics,
figures). It then writes the work of the gpu preset in clean-step-image units, which is
what a measured GPU throughput turns into seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from sim.common.files import atomic_write_text  # noqa: E402

from cifar import figures  # noqa: E402
from cifar.attacks import fgsm, loss_and_grad, _loss_fn  # noqa: E402
from cifar.lowrank import add_lowrank, delta_stats, merge_lowrank  # noqa: E402
from cifar.measures import compare  # noqa: E402
from cifar.models import build_model, effective_weights  # noqa: E402
from cifar.presets import get_preset  # noqa: E402
from cifar.runtime import Runtime  # noqa: E402
from cifar.train import make_optimizer  # noqa: E402


def timed(fn, reps: int, rt: Runtime) -> float:
    fn()  # warm-up (cudnn autotuning, allocator)
    rt.sync()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    rt.sync()
    return (time.perf_counter() - t) / reps


def per_image_costs(rt: Runtime, batch: int, reps: int, width: int) -> dict:
    torch.manual_seed(0)
    x = torch.rand(batch, 3, 32, 32, device=rt.device)
    y = torch.randint(0, 10, (batch,), device=rt.device)
    eps = 8 / 255
    out = {}

    def step_fn(model, params, adversarial):
        opt = make_optimizer(params, get_preset("gpu").clean)

        def step():
            model.train()
            xa = fgsm(model, x, y, "linf", eps) if adversarial else x
            loss = F.cross_entropy(model(xa), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return step

    net = rt.wrap(build_model("preact_resnet18", width=width))
    out["train_clean"] = timed(step_fn(net, list(net.parameters()), False), reps, rt) / batch
    out["train_fgsm"] = timed(step_fn(net, list(net.parameters()), True), reps, rt) / batch
    lr_net = rt.wrap(build_model("preact_resnet18", width=width))
    params = add_lowrank(lr_net, 16)
    out["train_fgsm_rank16"] = timed(step_fn(lr_net, params, True), reps, rt) / batch
    evaluator = rt.wrap(build_model("preact_resnet18", width=width), amp=False).eval()
    ce = _loss_fn("ce")
    out["eval_grad_fp32"] = timed(lambda: loss_and_grad(evaluator, x, y, ce), reps, rt) / batch

    def forward():
        with torch.no_grad():
            evaluator(x)

    out["eval_forward_fp32"] = timed(forward, reps, rt) / batch
    return out


def fixed_costs(width: int) -> dict:
    """Costs that do not grow with the data, on the CPU as in the pipeline."""
    torch.manual_seed(0)
    a, b, c = (build_model("preact_resnet18", width=width) for _ in range(3))
    out = {}
    t = time.perf_counter()
    wa, wb, wc = effective_weights(a), effective_weights(b), effective_weights(c)
    out["effective_weights_x3"] = time.perf_counter() - t
    t = time.perf_counter()
    compare(wa, wb, init=wc, adv_init=wa)
    out["compare_one_model"] = time.perf_counter() - t
    t = time.perf_counter()
    compare(wa, wb, init=wc, adv_init=wc, match_first=True)
    out["compare_matched_first_layer"] = time.perf_counter() - t
    add_lowrank(b, 16)
    with torch.no_grad():
        for m in b.modules():
            if hasattr(m, "U"):
                m.U.normal_()
    t = time.perf_counter()
    delta_stats(b)
    out["delta_stats_rank16"] = time.perf_counter() - t
    merge_lowrank(b)
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        figures.plot_filters({k: w["conv1"] for k, w in (("a", wa), ("b", wb), ("c", wc), ("d", wa), ("e", wb))}, Path(d) / "f.png")
        rows = [{"layer": n, "share_dominated": 0.5} for n in wa]
        figures.plot_share({"x": rows, "y": rows, "z": rows, "w": rows}, Path(d) / "s.png")
        figures.plot_lowrank([{"rank": r, "clean_acc": 0.8, "robust_acc": 0.4} for r in (1, 4, 16)], {"clean_acc": 0.8, "robust_acc": 0.45}, Path(d) / "l.png")
        figures.plot_radius({"x": [{"radius": r, "acc": 1 - r} for r in (0, 0.1, 0.5)]}, Path(d) / "r.png", "linf")
        out["figures_all"] = time.perf_counter() - t
    return out


def gpu_preset_work() -> dict:
    """The gpu preset's work per stage in image-passes of each kind (planned, before any budget)."""
    p = get_preset("gpu")
    n_train, n_test = 50_000, 10_000
    steps_per_epoch = n_train // p.clean.batch_size
    imgs = steps_per_epoch * p.clean.batch_size
    work = {"train:clean": {"train_clean": p.clean.epochs * imgs}}
    for name, cfg in [("train:adv_ft_full", p.adv_finetune)] + [(f"train:adv_ft_rank{r}", p.adv_finetune) for r in p.ranks]:
        checks = cfg.epochs * cfg.guard_checks_per_epoch + 1
        kind = "train_fgsm" if name.endswith("full") else "train_fgsm_rank16"
        work[name] = {kind: cfg.epochs * imgs, "eval_grad_fp32": checks * cfg.guard_n * cfg.guard_steps}
    ens, mk = p.ensemble, p.masking
    # upper bounds for a robust model: every attack runs all its steps on every point it is given
    robust_eval = {
        "eval_forward_fp32": n_test + ens.square_queries * ens.n + mk.square_queries * mk.n,
        "eval_grad_fp32": (p.pgd_steps * p.pgd_restarts * p.eval_pgd_n + p.pgd_steps * p.eval_pgd_n
                           + ens.apgd_steps * (1 + ens.n_targets) * ens.n + mk.pgd_steps * (1 + len(mk.radii)) * mk.n),
    }
    for name in ["adv_ft_full"] + [f"adv_ft_rank{r}" for r in p.ranks]:
        work[f"eval:{name}"] = robust_eval
    return work


def main() -> int:
    ap = argparse.ArgumentParser(prog="python scripts/cifar_costs.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--width", type=int, default=64, help="PreActResNet-18 width (64 = the real one)")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rt = Runtime.create(args.device)
    t0 = time.perf_counter()
    per_image = per_image_costs(rt, args.batch, args.reps, args.width)
    unit = per_image["train_clean"]
    result = {
        "runtime": rt.describe(),
        "batch": args.batch,
        "width": args.width,
        "seconds_per_image": per_image,
        "relative_to_clean_train_step": {k: v / unit for k, v in per_image.items()},
        "fixed_seconds_cpu": fixed_costs(args.width),
        "gpu_preset_work_images": gpu_preset_work(),
    }
    work = result["gpu_preset_work_images"]
    rel = result["relative_to_clean_train_step"]
    result["gpu_preset_work_clean_units"] = {stage: sum(n * rel[k] for k, n in kinds.items()) for stage, kinds in work.items()}
    result["measured_in_s"] = time.perf_counter() - t0
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        atomic_write_text(Path(args.json), text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
