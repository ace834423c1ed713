"""Purification measures, per layer and per neuron (= output channel of a conv/linear layer).

For clean weights w_i and adversarially trained weights w'_i of the same neuron:
    beta_i = <w_i, w'_i> / |w'_i|^2        (least-squares projection of w_i on w'_i)
    v_i    = w_i - beta_i w'_i              (so <v_i, w'_i> = 0)
The paper's principle says clean training already holds the robust feature:
|beta_i w'_i| > |v_i|.  Since |beta_i w'_i| = |w_i| |cos| and |v_i| = |w_i| sqrt(1 - cos^2),
this is exactly |cos(w_i, w'_i)| > 1/sqrt(2) — reported alongside, so the share is
read for what it is.  Correlations (cosines) with the initial weights say whether
training moved far from initialisation at all (if it did not, a high share would be vacuous).
"""

from __future__ import annotations

import math

import numpy as np
import torch

EPS = 1e-12


def _rows(w: torch.Tensor) -> torch.Tensor:
    return w.detach().double().reshape(w.shape[0], -1)


def cosine_rows(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Per-neuron cosine similarity of two weight tensors with the same shape."""
    a, b = _rows(a), _rows(b)
    return ((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(EPS)).numpy()


def purification(w_clean: torch.Tensor, w_adv: torch.Tensor) -> dict[str, np.ndarray]:
    """Per neuron: beta, |beta w'|, |v|, whether |beta w'| > |v|, cos(w, w') (the split is
    sim.measures.beta_split, in float64).

    A neuron with w' = 0 gets beta = 0 (v = w) and does not count as dominated."""
    if w_clean.shape != w_adv.shape:
        raise ValueError(f"weight shapes differ: clean {tuple(w_clean.shape)} vs adversarial {tuple(w_adv.shape)}")
    from sim.measures import beta_split  # the one split, shared with sim; imported here: sim.measures loads Numba

    beta, _, proj_norm, v_norm = beta_split(_rows(w_clean).numpy(), _rows(w_adv).numpy())
    return {
        "beta": beta,
        "proj_norm": proj_norm,
        "v_norm": v_norm,
        "dominated": proj_norm > v_norm,
        "cos": cosine_rows(w_clean, w_adv),
    }


def relative_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """|a - b| / |b| over the whole layer (Frobenius)."""
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(EPS))


def layer_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return float(a @ b / (a.norm() * b.norm()).clamp_min(EPS))


def matched_abs_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean |cos| after matching b's neurons to a's (Hungarian).  Meaningful when the inputs
    of the layer are the same for both nets (the first layer), not deeper down."""
    from scipy.optimize import linear_sum_assignment

    A, B = _rows(a), _rows(b)
    A = A / A.norm(dim=1, keepdim=True).clamp_min(EPS)
    B = B / B.norm(dim=1, keepdim=True).clamp_min(EPS)
    c = (A @ B.T).abs().numpy()
    r, k = linear_sum_assignment(-c)
    return float(c[r, k].mean())


def _stats(x: np.ndarray) -> dict:
    return {"mean": float(np.mean(x)), "median": float(np.median(x)), "q10": float(np.quantile(x, 0.1)), "q90": float(np.quantile(x, 0.9))}


def compare(clean: dict[str, torch.Tensor], adv: dict[str, torch.Tensor], init: dict[str, torch.Tensor] | None = None,
            adv_init: dict[str, torch.Tensor] | None = None, match_first: bool = False) -> dict:
    """Per-layer summaries and per-neuron arrays for clean weights vs adversarial weights.

    ``init``: the clean run's initial weights; ``adv_init``: the adversarial run's own
    initial weights (the clean weights for fine-tuning).  ``match_first``: also report
    the permutation-matched |cos| of the first layer (for independently trained nets).
    """
    layers, neurons = [], {}
    names = [k for k in clean if k in adv]
    for li, name in enumerate(names):
        w, wp = clean[name].double(), adv[name].double()  # once here, not in every measure below
        p = purification(w, wp)
        row = {
            "layer": name,
            "shape": list(w.shape),
            "neurons": int(w.shape[0]),
            "share_dominated": float(p["dominated"].mean()),
            "beta": _stats(p["beta"]),
            "cos_clean_adv": _stats(p["cos"]),
            "abs_cos_clean_adv_mean": float(np.abs(p["cos"]).mean()),
            "ratio_proj_to_v": _stats(p["proj_norm"] / np.maximum(p["v_norm"], EPS)),
            "layer_cos_clean_adv": layer_cosine(w, wp),
            "rel_dist_adv_from_clean": relative_distance(wp, w),
        }
        arrays = {k: p[k] for k in ("beta", "proj_norm", "v_norm", "cos")}
        if init is not None and name in init:
            w0 = init[name].double()
            c_ci, c_ai = cosine_rows(w, w0), cosine_rows(wp, w0)
            control = purification(w, w0)
            row.update({
                "cos_clean_init": _stats(c_ci),
                "cos_adv_init": _stats(c_ai),
                "rel_dist_clean_from_init": relative_distance(w, w0),
                "rel_dist_adv_from_init": relative_distance(wp, w0),
                "control_share_clean_vs_init": float(control["dominated"].mean()),
            })
            arrays.update({"cos_clean_init": c_ci, "cos_adv_init": c_ai})
        if adv_init is not None and name in adv_init:
            row["rel_dist_adv_from_own_init"] = relative_distance(wp, adv_init[name])
        if match_first and li == 0:
            row["matched_abs_cos_clean_adv"] = matched_abs_cosine(w, wp)
        layers.append(row)
        neurons[name] = arrays
    total = sum(r["neurons"] for r in layers)
    overall = {
        "layers": len(layers),
        "neurons": total,
        "share_dominated": sum(r["share_dominated"] * r["neurons"] for r in layers) / max(total, 1),
        "layers_with_majority_dominated": sum(r["share_dominated"] > 0.5 for r in layers),
        "threshold_abs_cos": 1 / math.sqrt(2),
    }
    if layers and "control_share_clean_vs_init" in layers[0]:
        overall["control_share_clean_vs_init"] = sum(r["control_share_clean_vs_init"] * r["neurons"] for r in layers) / max(total, 1)
        overall["mean_rel_dist_clean_from_init"] = float(np.mean([r["rel_dist_clean_from_init"] for r in layers]))
        overall["mean_rel_dist_adv_from_init"] = float(np.mean([r["rel_dist_adv_from_init"] for r in layers]))
    return {"layers": layers, "overall": overall, "neurons": neurons}
