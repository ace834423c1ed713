"""The claims of SPEC section 4 as data: one table of what is measured, the comparator, the
threshold and where the claim comes from ([paper]: Allen-Zhu & Li state it; [ours]: our
reconstruction). verify, scaling, report and the sweep's figures all read it, so a threshold
is written once. The numbers of the thresholds are ours throughout (the paper states the
claims asymptotically); `source` says whose claim it is.

The C6 window (the radii where C1, C3 and C5 hold together) is computed here too, by
c6_window, for verify --scaling and for the sweep's figures alike.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass

_OPS = {"<=": operator.le, ">=": operator.ge, "==": operator.eq, ">": operator.gt, "<": operator.lt}


@dataclass(frozen=True)
class ClaimDef:
    key: str  # the claim's id; verify's ids add the threat model, e.g. C1-robust-l2
    measured: str
    comparator: str  # one of <=, >=, ==, >, <
    threshold_text: str  # the threshold as written, e.g. "0.10"
    source: str  # "paper" or "ours"
    shown: str | None = None  # the threshold column when it says more than "comparator threshold"

    @property
    def threshold(self) -> float:
        return float(self.threshold_text)

    @property
    def text(self) -> str:
        """The threshold column of the claims table."""
        return self.shown or f"{self.comparator} {self.threshold_text}"

    def holds(self, value) -> bool:
        return bool(_OPS[self.comparator](value, self.threshold))


_C3_ROBUST = ClaimDef("C3-robust", "adversarially trained network: robust accuracy at the training radius", ">=",
                      "0.90", "paper")

# C5, one claim per model class, each judged on the best member found (sim.lowerbound.claims.c5_claims).
# A class claim holds only if, besides, the network is robust there (C3-robust): C5 compares the
# classes with a robust network. The polynomial degrees are those the C5 table tries (kernel
# machines of degree 2, 3; per-atom polynomials of degree 3, 5, 7).
C5_POLY_DEGREES = (2, 3, 5, 7)
_C5_LINEAR, _C5_OTHER = "0.10", "0.20"  # SPEC C5: linear models <= 0.10, every other class <= 0.20


def _c5(key: str, measured: str, threshold: str) -> ClaimDef:
    return ClaimDef(key, measured, "<=", threshold, "paper", shown=f"<= {threshold} (network {_C3_ROBUST.text})")


_C5 = (_c5("C5-linear", "linear models (exact robust accuracy): best robust accuracy found", _C5_LINEAR),
       *(_c5(f"C5-poly-deg{p}", f"degree-{p} polynomials (kernel machines and per-atom polynomials, trained or "
             "hand-built; attacked, certified where possible): best robust accuracy found", _C5_OTHER)
         for p in C5_POLY_DEGREES),
       _c5("C5-ntk", "the network's NTK at its initialisation (clean and adversarially trained): best robust "
           "accuracy found", _C5_OTHER))

# C7 and C8 (python -m sim experiments strategies, sim.experiments.strategies_report.claims). C7-robust
# reads C3's threshold; the levels the measures use (reach 0.95 of the FGM plateau, 0.90 of the full
# gain, the top 2 directions) are StrategiesConfig fields, named in each claim's description.
_C7C8 = (
    ClaimDef("C7-robust", "FGM-RS- or PGD-k-trained network (to a plateau): attacked robust accuracy at the training "
             "radius (the C3 threshold)", ">=", _C3_ROBUST.threshold_text, "paper"),
    ClaimDef("C7-steps", "training steps of PGD-k / steps of FGM-RS to reach a level of the FGM plateau of a cheap "
             "robust accuracy (fewer for the iterative strategy)", "<", "1", "paper"),
    ClaimDef("C8-spectrum", "share of the FGM update's energy |W_adv - W_clean|_F^2 in its top directions (and more "
             "than the random-noise control's)", ">=", "0.5", "ours", shown=">= 0.5 [ours] and > control"),
    ClaimDef("C8-rank", "smallest rank r of W_clean + U V^T (FGM training of the factors) whose robust-accuracy gain "
             "reaches a share of the full update's", "<=", "4", "ours", shown="<= 4 [ours]"),
)

CLAIMS = {c.key: c for c in (
    ClaimDef("C1-clean", "clean network: clean test accuracy (C1 counts in the C6 window only above it)", ">=", "0.99",
             "paper"),
    ClaimDef("C1-robust", "clean network: robust accuracy at the training radius (best of the attacks)", "<=", "0.10",
             "paper"),
    ClaimDef("C2-dense", "clean network: mean cosine of the neurons' dense parts with w*", ">=", "0.3", "ours",
             shown=">= 0.3 [ours]"),
    ClaimDef("C2C4-align", "|dense-part cosine with w*|: clean / adversarially trained", ">=", "5", "ours"),
    _C3_ROBUST,
    ClaimDef("C3-certified", "adversarially trained network: certified robust accuracy (sound lower bound)", ">=",
             "0.80", "paper"),
    ClaimDef("C3-clean", "adversarially trained network: clean accuracy", ">=", "0.97", "paper"),
    ClaimDef("C3-masking", "gradient masking flag (non-gradient attacks break > 1 % of the points FGM and PGD miss)",
             "==", "0", "paper"),
    ClaimDef("C4-purified", "share of learned neurons with |beta_i w'_i| > |v_i|", ">=", "0.80", "paper"),
    ClaimDef("C4-init", "mean |cos| of clean and adversarial weights with their init (max of the two)", "<=", "0.20",
             "paper"),
    ClaimDef("control", "random-noise training at the same radius: robust accuracy (must stay low)", "<=", "0.50",
             "ours", shown="<= 0.50 [ours]"),
    *_C5,
    ClaimDef("C6", "the window (max(tau_C1, tau_lin), tau_C3] widens with d: last width - first width, widths "
             "monotone", ">", "0", "ours", shown="> 0 and monotone"),
    *_C7C8,
)}

C5_KEYS = tuple(c.key for c in _C5)


@dataclass
class Claim:
    """One line of a claims table: a ClaimDef judged on a measured value."""

    id: str
    description: str
    value: float
    threshold: str
    holds: bool

    def to_dict(self):
        return {"id": self.id, "description": self.description, "value": self.value, "threshold": self.threshold,
                "holds": bool(self.holds)}


def judge(key: str, suffix: str, description: str, value, holds: bool | None = None) -> Claim:
    """The Claim of CLAIMS[key] for a value (its id: key + suffix); holds from the table's
    comparator unless given (a claim made of several conditions)."""
    c = CLAIMS[key]
    return Claim(f"{key}{suffix}", description, value, c.text, c.holds(value) if holds is None else bool(holds))


def _fmt(v):
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def claims_table(claims) -> str:
    """A markdown table of claim dicts (Claim.to_dict())."""
    rows = ["| id | measured | value | threshold | holds |", "| --- | --- | --- | --- | --- |"]
    for c in claims:
        rows.append(f"| {c['id']} | {c['description']} | {_fmt(c['value'])} | {c['threshold']} | "
                    f"{'yes' if c['holds'] else '**no**'} |")
    return "\n".join(rows)


def c6_window(taus, clean_net: dict, linear: list, adv_net: dict, clean_acc_clean: float = math.nan,
              clean_acc_adv: float = math.nan, gate_clean: bool = True) -> dict:
    """The C6 window at one cell from robust-accuracy curves {tau: accuracy}:

    tau_C1: the first radius where the clean network's robust accuracy is <= C1-robust (inf if
    none, or if its clean accuracy is below C1-clean); tau_lin: the first radius where every
    linear model is <= C5-linear (nan without linear models); tau_C3: the largest radius up to
    which the adversarially trained network stays >= C3-robust from the smallest radius on
    (0 if its clean accuracy is below C3-clean); lo = max(tau_C1, tau_lin); width =
    max(0, tau_C3 - lo) (0 when lo is infinite). gate_clean=False skips the clean-accuracy
    conditions (callers without them)."""
    taus = sorted(taus)
    c1_ok = not gate_clean or clean_acc_clean >= CLAIMS["C1-clean"].threshold
    tau_c1 = next((t for t in taus if c1_ok and CLAIMS["C1-robust"].holds(clean_net[t])), math.inf)
    lin = [c for c in linear if c]
    tau_lin = (next((t for t in taus if all(CLAIMS["C5-linear"].holds(c.get(t, 1.0)) for c in lin)), math.inf)
               if lin else math.nan)
    tau_c3 = 0.0
    if adv_net and (not gate_clean or clean_acc_adv >= CLAIMS["C3-clean"].threshold):
        for t in taus:
            if CLAIMS["C3-robust"].holds(adv_net.get(t, 0.0)):
                tau_c3 = t
            else:
                break
    lo = max(tau_c1, tau_lin) if not math.isnan(tau_lin) else tau_c1
    width = max(0.0, tau_c3 - lo) if math.isfinite(lo) else 0.0
    return {"tau_C1": tau_c1, "tau_lin": tau_lin, "tau_C3": tau_c3, "lo": lo, "width": width}
