"""Claim C5 split by model class: one claim per class, judged on the best member found.

    c5_claims(rows, norm, tau, net_robust) -> [dict(id, description, value, threshold, holds, source)]

rows: the rows of table.lower_bound_table (each has `class`: 'linear', 'polyP' or 'ntk').
A lower bound is about the class, so every row of a class counts, hand-built ('oracle')
members included: the claim's value is the best robust accuracy among them (exact for
linear models; for the others the attacked number, an upper bound on the true one, with
the certified lower bound of the same member in the description where it exists).
Thresholds as in SPEC C5: linear <= 0.10, every other class <= 0.20. As before the split,
a class claim holds only if, besides, the network is robust at that radius
(net_robust >= 0.90, C3): C5 compares the classes with a robust network.
"""
from __future__ import annotations

import re

SOURCE = "sim.lowerbound.claims.c5_claims (rows of sim.lowerbound.table.lower_bound_table)"
NET_THRESHOLD = 0.90


def _class_key(name: str):
    if name == "linear":
        return (0, 0)
    m = re.fullmatch(r"poly(\d+)", name)
    if m:
        return (1, int(m.group(1)))
    return (2, 0) if name == "ntk" else (3, 0)


def _claim_id(name: str, norm: str) -> str:
    m = re.fullmatch(r"poly(\d+)", name)
    return f"C5-poly-deg{m.group(1)}-{norm}" if m else f"C5-{name}-{norm}"


def _rob(r) -> str:
    if r["robust_kind"] == "exact":
        return f"{r['robust_acc']:.3f} exact"
    if "certified_acc" in r:
        return f"[certified {r['certified_acc']:.3f}, attacked {r['robust_acc']:.3f}]"
    return f"{r['robust_acc']:.3f} attacked"


def c5_claims(rows: list[dict], norm: str, tau: float, net_robust: float) -> list[dict]:
    """One claim per class present in rows, in the order linear, poly by degree, ntk."""
    by_class: dict[str, list[dict]] = {}
    for r in rows:
        by_class.setdefault(r.get("class", r["model"]), []).append(r)
    out = []
    for name in sorted(by_class, key=_class_key):
        members = by_class[name]
        best = max(members, key=lambda r: (r["robust_acc"], r.get("certified_acc", -1.0)))
        thr = 0.10 if name == "linear" else 0.20
        n = "-" if best["n_train"] is None else str(best["n_train"])
        tried = ", ".join(f"{r['training']}{'' if r['n_train'] is None else '@' + str(r['n_train'])} "
                          f"{r['robust_acc']:.3f}" for r in members)
        cert = max((r["certified_acc"] for r in members if "certified_acc" in r), default=None)
        desc = (f"best {name} model at {norm} tau={tau:g}: {best['training']} (n_train {n}), robust accuracy "
                f"{_rob(best)}; how: {best.get('note', '')}; members tried: {tried}"
                + (f"; best certified in the class {cert:.3f}" if cert is not None else "")
                + f"; network {net_robust:.3f} (" + ("the class reaches the network" if best["robust_acc"] >= net_robust
                                                      else "below the network") + ")"
                + f"; holds if <= {thr:g} and the network >= {NET_THRESHOLD:g}")
        out.append({"id": _claim_id(name, norm), "description": desc, "value": float(best["robust_acc"]),
                    "threshold": f"<= {thr:g} (network >= {NET_THRESHOLD:g})",
                    "holds": bool(best["robust_acc"] <= thr and net_robust >= NET_THRESHOLD), "source": SOURCE})
    return out
