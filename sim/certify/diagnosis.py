"""Certified against attacked robust accuracy: where they differ by more than a threshold,
the exact verifier decides a sample of the gap points (above both certificate and exact,
so neither imports the other)."""
from __future__ import annotations

import numpy as np

from .bounds import check_args
from .certificate import certify
from .exact import exact_check


def certify_gap_diagnosis(net, X, y, tau, norm, attacked_broken_mask, n_exact: int = 20, cert=None,
                          time_limit: float = 30.0, threshold: float = 0.10, seed: int = 0) -> dict:
    """Why certified and attacked robust accuracy differ, checked with the exact verifier.

    attacked_broken_mask: per sample, True where some attack (or the clean point) breaks it,
    e.g. RobustReport.broken. cert: a CertResult for the same (X, y, tau, norm), computed if
    None. When attacked - certified accuracy > threshold (10 points), up to n_exact gap points
    (not certified, not broken by the attacks) are drawn with `seed` and decided exactly
    (sim.certify.exact.exact_check in decide mode, time_limit seconds each): a gap point proved
    robust means the bound is loose there, one with a flipping perturbation found means the
    attack is weak (e.g. gradient masking). Returns a dict with the accuracies, the counts,
    an estimate of the true robust accuracy and a one-line 'verdict'.
    """
    check_args(norm, tau)
    broken = np.asarray(attacked_broken_mask, dtype=bool)
    if broken.shape != (len(np.atleast_1d(y)),):
        raise ValueError(f"attacked_broken_mask of shape {broken.shape} is invalid: expected one bool per sample")
    if cert is None:
        cert = certify(net, X, y, tau, norm, focus=~broken)
    # a sound bound and a valid attack never meet; with float32 forward passes a margin within
    # rounding of 0 can, so such points are counted (and should be 0) rather than fatal
    clash = int(np.sum(cert.certified & broken))
    attacked = float(np.mean(~broken))
    gap = attacked - cert.certified_accuracy
    gap_idx = np.nonzero(~cert.certified & ~broken)[0]
    out = {"norm": norm, "tau": float(tau), "certified_accuracy": cert.certified_accuracy,
           "attacked_accuracy": attacked, "gap": gap, "flagged": bool(gap > threshold),
           "n_gap_points": int(len(gap_idx)), "n_checked": 0, "robust": 0, "broken": 0, "undecided": 0,
           "exact_seconds": 0.0, "checked_indices": [], "certified_but_attacked": clash,
           "estimated_robust_accuracy": None}
    if not out["flagged"]:
        out["verdict"] = (f"gap {100 * gap:.1f} points <= {100 * threshold:.0f}: certified "
                          f"{100 * cert.certified_accuracy:.1f} % and attacked {100 * attacked:.1f} % agree")
        return out
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(gap_idx, size=min(n_exact, len(gap_idx)), replace=False))
    chk = exact_check(net, X, y, tau, norm, max_samples=len(pick), time_limit=time_limit, indices=pick)
    cnt = chk.counts()
    out.update(n_checked=len(pick), exact_seconds=chk.seconds, checked_indices=[int(i) for i in pick], **cnt)
    n_dec = cnt["robust"] + cnt["broken"]
    head = (f"gap {100 * gap:.1f} points (certified {100 * cert.certified_accuracy:.1f} %, attacked "
            f"{100 * attacked:.1f} %); exact verifier on {len(pick)} of {len(gap_idx)} gap points: "
            f"{cnt['robust']} robust, {cnt['broken']} breakable, {cnt['undecided']} undecided")
    if n_dec == 0:
        out["verdict"] = head + " -> undecided (the exact verifier timed out; raise time_limit)"
        return out
    share = cnt["robust"] / n_dec
    out["estimated_robust_accuracy"] = cert.certified_accuracy + len(gap_idx) / len(broken) * share
    if share >= 0.5:
        why = "bound loose" + ("" if cnt["broken"] == 0 else " (mostly; the attack also misses some)")
    else:
        why = "attack weak (gradient masking?)" + ("" if cnt["robust"] == 0 else " (mostly; the bound is also loose)")
    out["verdict"] = head + f" -> {why}; estimated robust accuracy {100 * out['estimated_robust_accuracy']:.1f} %"
    return out
