"""Claim C5 split by model class: one claim per class, judged on the best member found.

    c5_claims(rows, norm, tau, net_robust) -> [dict(id, description, value, threshold, holds, source)]

rows: the rows of table.lower_bound_table (each has `class`: 'linear', 'polyP' or 'ntk').
A lower bound is about the class, so every row of a class counts, hand-built ('oracle')
members included: the claim's value is the best robust accuracy among them (exact for
linear models; for the others the attacked number, an upper bound on the true one, with
the certified lower bound of the same member in the description where it exists).
The claims and their thresholds are data in sim.claims (C5-linear, C5-poly-degP, C5-ntk;
SPEC C5: linear <= 0.10, every other class <= 0.20). A class claim holds only if, besides,
the network is robust at that radius (sim.claims C3-robust, >= 0.90): C5 compares the
classes with a robust network.
"""
from __future__ import annotations

import re

from sim.claims import C5_KEYS, CLAIMS
from sim.common.validation import ConfigError

SOURCE = "sim.lowerbound.claims.c5_claims (rows of sim.lowerbound.table.lower_bound_table)"


def _class_key(name: str):
    if name == "linear":
        return (0, 0)
    m = re.fullmatch(r"poly(\d+)", name)
    if m:
        return (1, int(m.group(1)))
    return (2, 0) if name == "ntk" else (3, 0)


def claim_key(name: str) -> str:
    """The sim.claims key of a model class ('linear' -> C5-linear, 'poly3' -> C5-poly-deg3, 'ntk' -> C5-ntk);
    a ConfigError for a class without a C5 claim there."""
    m = re.fullmatch(r"poly(\d+)", name)
    key = f"C5-poly-deg{m.group(1)}" if m else f"C5-{name}"
    if key not in CLAIMS:
        raise ConfigError(f"model class {name!r} has no C5 claim in sim.claims: allowed classes with a claim are "
                          + ", ".join(k[len("C5-"):] for k in C5_KEYS) + " (polynomial degrees: add a claim there)")
    return key


def _rob(r) -> str:
    if r["robust_kind"] == "exact":
        return f"{r['robust_acc']:.3f} exact"
    if "certified_acc" in r:
        return f"[certified {r['certified_acc']:.3f}, attacked {r['robust_acc']:.3f}]"
    return f"{r['robust_acc']:.3f} attacked"


def c5_claims(rows: list[dict], norm: str, tau: float, net_robust: float) -> list[dict]:
    """One claim per class present in rows, in the order linear, poly by degree, ntk; ids are the
    sim.claims keys with the threat model, e.g. C5-poly-deg3-l2."""
    by_class: dict[str, list[dict]] = {}
    for r in rows:
        by_class.setdefault(r.get("class", r["model"]), []).append(r)
    net_def = CLAIMS["C3-robust"]
    out = []
    for name in sorted(by_class, key=_class_key):
        key = claim_key(name)
        c = CLAIMS[key]
        members = by_class[name]
        best = max(members, key=lambda r: (r["robust_acc"], r.get("certified_acc", -1.0)))
        n = "-" if best["n_train"] is None else str(best["n_train"])
        tried = ", ".join(f"{r['training']}{'' if r['n_train'] is None else '@' + str(r['n_train'])} "
                          f"{r['robust_acc']:.3f}" for r in members)
        cert = max((r["certified_acc"] for r in members if "certified_acc" in r), default=None)
        desc = (f"best {name} model at {norm} tau={tau:g}: {best['training']} (n_train {n}), robust accuracy "
                f"{_rob(best)}; how: {best.get('note', '')}; members tried: {tried}"
                + (f"; best certified in the class {cert:.3f}" if cert is not None else "")
                + f"; network {net_robust:.3f} (" + ("the class reaches the network" if best["robust_acc"] >= net_robust
                                                      else "below the network") + ")"
                + f"; holds if {c.comparator} {c.threshold_text} and the network {net_def.text}")
        out.append({"id": f"{key}-{norm}", "description": desc, "value": float(best["robust_acc"]),
                    "threshold": c.text, "holds": bool(c.holds(best["robust_acc"]) and net_def.holds(net_robust)),
                    "source": SOURCE})
    return out
