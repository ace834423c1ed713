"""Purification measures of the hidden weights (SPEC C2 and C4; the measures are [ours]).

Dictionary basis: c_i = M^T w_i. A neuron's principal part is its coordinates with
|c_ij| >= principal_threshold * max_j |c_ij| (its few large atoms); the rest is its
dense part. With an orthogonal M, w_i = M c_i splits exactly into the two parts.

C2 (clean weights carry a dense mixture along w*):
- dense_ratio_i = |dense part| / |principal part|;
- dense_cos_i = cos(dense part of c_i, s_i w*), s_i = sign(c_ij*) w*_j* for the largest
  atom j* (so a neuron that votes for the label of its atom has s_i = +1);
- dense output share: mean |f(x) - f_P(x)| / mean |f(x)| on test points, f_P the network
  with every neuron cut to its principal part (same biases).
C4 (purification, w_i clean, w'_i adversarially trained from w_i):
- beta_i = <w_i, w'_i> / |w'_i|^2, v_i = w_i - beta_i w'_i (the least-squares split);
  the share of neurons with |beta_i w'_i| > |v_i|;
- the share of |v_i|^2 outside the principal atoms of w'_i (v_i "mostly dense");
- |cos(w_i, w_i^0)| and |cos(w'_i, w_i^0)| with the initial weights.

Summaries average over the learned neurons: |w_i| >= learned_fraction * max_j |w_j|
(neurons that never grew beyond their tiny init carry no feature). Every measure is
invariant under permuting the neurons and under rotating x, w and M together.
"""
from __future__ import annotations

import numpy as np

from .model.network import TwoLayerNet


def _row_cos(A, B):
    na = np.linalg.norm(A, axis=1)
    nb = np.linalg.norm(B, axis=1)
    den = na * nb
    return np.where(den > 0, np.sum(A * B, axis=1) / np.where(den > 0, den, 1.0), 0.0)


def coefficients(W, M):
    """c_i = M^T w_i for every neuron (m x D)."""
    return np.asarray(W, np.float64) @ M


def principal_mask(C, threshold=0.5):
    """Boolean (m x D): the principal coordinates of each neuron."""
    mx = np.max(np.abs(C), axis=1, keepdims=True)
    return np.abs(C) >= threshold * np.where(mx > 0, mx, np.inf)


def learned(W, fraction=0.1):
    """Neurons whose norm is at least `fraction` of the largest norm."""
    n = np.linalg.norm(np.asarray(W, np.float64), axis=1)
    return n >= fraction * n.max() if n.max() > 0 else np.zeros(len(n), bool)


def dense_measures(W, M, wstar, threshold=0.5):
    """Per-neuron C2 measures: dict of arrays dense_ratio, dense_cos, principal_atom."""
    C = coefficients(W, M)
    P = principal_mask(C, threshold)
    principal = np.where(P, C, 0.0)
    dense = np.where(P, 0.0, C)
    j = np.argmax(np.abs(C), axis=1)
    s = np.sign(C[np.arange(len(C)), j]) * wstar[j]
    pn = np.linalg.norm(principal, axis=1)
    ratio = np.linalg.norm(dense, axis=1) / np.where(pn > 0, pn, np.inf)
    cos = s * _row_cos(dense, np.broadcast_to(wstar, dense.shape))
    return {"dense_ratio": ratio, "dense_cos": cos, "principal_atom": j, "n_principal": P.sum(axis=1)}


def principal_net(net: TwoLayerNet, M, threshold=0.5) -> TwoLayerNet:
    """The network with every neuron cut to its principal part (biases kept as they are)."""
    C = coefficients(net.W, M)
    P = principal_mask(C, threshold)
    W_P = np.where(P, C, 0.0) @ np.linalg.pinv(M)
    return TwoLayerNet(W_P.astype(net.W.dtype), net.model.replace(bias="fixed"), b=net.bias().copy())


def dense_output_share(net: TwoLayerNet, M, X, threshold=0.5) -> float:
    f = net.forward(X)
    f_p = principal_net(net, M, threshold).forward(X)
    den = np.mean(np.abs(f))
    return float(np.mean(np.abs(f - f_p)) / den) if den > 0 else 0.0


def beta_split(W_clean, W_adv):
    """The C4 split of each row, w_i = beta_i w'_i + v_i with beta_i = <w_i, w'_i> / |w'_i|^2 (least
    squares, so <v_i, w'_i> = 0; beta_i = 0 and v_i = w_i where w'_i = 0), in float64 (rows:
    neurons; a conv layer's filters flattened). Returns (beta, V, |beta_i w'_i|, |v_i|).
    The one definition for sim and for cifar's measures."""
    W = np.asarray(W_clean, np.float64)
    Wa = np.asarray(W_adv, np.float64)
    na2 = np.sum(Wa * Wa, axis=1)
    beta = np.where(na2 > 0, np.sum(W * Wa, axis=1) / np.where(na2 > 0, na2, 1.0), 0.0)
    V = W - beta[:, None] * Wa
    return beta, V, np.abs(beta) * np.sqrt(na2), np.linalg.norm(V, axis=1)


def purification(W_clean, W_adv, M=None, threshold=0.5):
    """Per-neuron C4 split w_i = beta_i w'_i + v_i: arrays beta, v_norm, proj_norm, purified
    (|beta_i w'_i| > |v_i|) and, given M, dense_share_of_v."""
    beta, V, proj, vn = beta_split(W_clean, W_adv)
    out = {"beta": beta, "v_norm": vn, "proj_norm": proj, "purified": proj > vn}
    if M is not None:
        P = principal_mask(coefficients(np.asarray(W_adv, np.float64), M), threshold)
        Cv = coefficients(V, M)
        tot = np.sum(Cv ** 2, axis=1)
        out["dense_share_of_v"] = np.where(tot > 0, np.sum(np.where(P, 0.0, Cv) ** 2, axis=1) / np.where(tot > 0, tot, 1), 0.0)
    return out


def init_correlation(W, W0):
    """|cos(w_i, w_i^0)| per neuron."""
    return np.abs(_row_cos(np.asarray(W, np.float64), np.asarray(W0, np.float64)))


def summarize_dense(net: TwoLayerNet, M, wstar, X, threshold=0.5, learned_fraction=0.1) -> dict:
    """C2 summary over the learned neurons."""
    keep = learned(net.W, learned_fraction)
    d = dense_measures(net.W, M, wstar, threshold)
    return {"learned_neurons": int(keep.sum()),
            "dense_ratio_mean": float(np.mean(d["dense_ratio"][keep])),
            "dense_cos_mean": float(np.mean(d["dense_cos"][keep])),
            "dense_output_share": dense_output_share(net, M, X, threshold),
            "distinct_principal_atoms": int(len(np.unique(d["principal_atom"][keep])))}


def summarize_purification(W_clean, W_adv, W_init, M, threshold=0.5, learned_fraction=0.1) -> dict:
    """C4 summary over the neurons learned in the clean network."""
    keep = learned(W_clean, learned_fraction)
    p = purification(W_clean, W_adv, M, threshold)
    return {"purified_share": float(np.mean(p["purified"][keep])),
            "v_dense_share_mean": float(np.mean(p["dense_share_of_v"][keep])),
            "beta_median": float(np.median(p["beta"][keep])),
            "init_corr_clean": float(np.mean(init_correlation(W_clean, W_init)[keep])),
            "init_corr_adv": float(np.mean(init_correlation(W_adv, W_init)[keep]))}


def dictionary_picture(C0: np.ndarray, Ca: np.ndarray, n_neurons: int = 48, n_atoms: int = 64) -> dict:
    """What the weights-in-the-dictionary-basis figures show: the n_neurons largest neurons of
    the clean coefficients C0 = M^T W (rows sorted by principal atom), on n_atoms atoms that
    include every shown neuron's principal atom first, then the lowest others (columns in
    atom order); |c_ij| / max_j |c_ij| for the clean (C0) and adversarially trained (Ca)
    coefficients. Returns {neurons, atoms, clean, adv} (float32 pictures)."""
    keep = np.argsort(-np.linalg.norm(C0, axis=1), kind="stable")[:n_neurons]
    order = keep[np.argsort(np.argmax(np.abs(C0[keep]), axis=1), kind="stable")]
    principal = np.argmax(np.abs(C0[order]), axis=1)
    atoms = list(dict.fromkeys(principal.tolist()))
    atoms += [j for j in range(C0.shape[1]) if j not in set(atoms)][:max(0, n_atoms - len(atoms))]
    atoms = np.array(sorted(atoms[:n_atoms]))
    out = {"neurons": order, "atoms": atoms}
    for name, C in (("clean", C0), ("adv", Ca)):
        A = np.abs(C[order][:, atoms])
        out[name] = (A / np.maximum(np.abs(C[order]).max(axis=1, keepdims=True), 1e-300)).astype(np.float32)
    return out


def by_margin(ok, classes) -> dict:
    """Accuracy per margin class (sim.model.data.margin_classes): {"1": {"acc", "n"}, "2": ...,
    ">=3": ...}; acc is None for an empty class. ok: bool per point (robust, certified, ...)."""
    from .model.data import MARGIN_CLASSES

    ok = np.asarray(ok, bool)
    classes = np.asarray(classes)
    out = {}
    for i, name in enumerate(MARGIN_CLASSES):
        sel = classes == i
        n = int(sel.sum())
        out[name] = {"acc": float(np.mean(ok[sel])) if n else None, "n": n}
    return out


def principal_share(W, M) -> np.ndarray:
    """Per neuron, max_j |c_ij| / |c_i| (c_i = M^T w_i): the norm share of the largest atom
    (1 for a neuron that is one atom; about 1 / sqrt(D) for a dense one)."""
    C = coefficients(W, M)
    n = np.linalg.norm(C, axis=1)
    return np.where(n > 0, np.max(np.abs(C), axis=1) / np.where(n > 0, n, 1.0), 0.0)


def readable_purification(W_clean, W_adv, M, threshold=0.5, learned_fraction=0.1) -> dict:
    """C4 made readable (issue 12), over the neurons learned in the clean network:

    - principal_kept_share: the share whose principal (largest) atom is the same before and
      after adversarial training (the per-neuron split w_i = beta_i w'_i + v_i is only
      meaningful for those: a neuron that changed atom was rebuilt, not purified);
    - purified_share_kept: the split's purified share among them (None if there are none);
    - clean_top_atom_share_median: the median over the clean neurons of max_j |c_ij| / |w_i|
      (the norm share of the largest atom; principal_share), and
      clean_principal_norm_share_median: the median of |principal part| / |w_i| (the
      principal part at `threshold`, as C2): feature-dominated clean training has both near
      1, dense-dominated clean training far below.
    """
    keep = learned(W_clean, learned_fraction)
    Cc, Ca = coefficients(W_clean, M), coefficients(W_adv, M)
    same = np.argmax(np.abs(Cc), axis=1) == np.argmax(np.abs(Ca), axis=1)
    pur = purification(W_clean, W_adv)["purified"]
    sel = keep & same
    P = principal_mask(Cc, threshold)
    nc = np.linalg.norm(Cc, axis=1)
    pshare = np.where(nc > 0, np.linalg.norm(np.where(P, Cc, 0.0), axis=1) / np.where(nc > 0, nc, 1.0), 0.0)
    return {"principal_kept_share": float(np.mean(same[keep])) if keep.any() else 0.0,
            "purified_share_kept": float(np.mean(pur[sel])) if sel.any() else None,
            "clean_top_atom_share_median": float(np.median(principal_share(W_clean, M)[keep])) if keep.any() else 0.0,
            "clean_principal_norm_share_median": float(np.median(pshare[keep])) if keep.any() else 0.0}
