"""Certified robustness of the symmetric two-layer ReLU network: sound lower bounds on the
worst-case margin (bounds, quadratic, certificate), the exact MILP verifier (exact), and the
diagnosis of a gap between certified and attacked robust accuracy (diagnosis).

    certify(net, X, y, tau, norm) -> CertResult     certify_radii(net, X, y, taus, norm)
    exact_check / exact_solve / exact_min_margin     certify_gap_diagnosis(...)
"""
from .bounds import METHODS, NORMS, check_args, margins, shrink, shrinkage_params
from .certificate import CertResult, certify, certify_radii
from .diagnosis import certify_gap_diagnosis
from .exact import exact_check, exact_min_margin, exact_solve
from .quadratic import box_quadratic_bound

__all__ = ["METHODS", "NORMS", "CertResult", "box_quadratic_bound", "certify", "certify_gap_diagnosis", "certify_radii",
           "check_args", "exact_check", "exact_min_margin", "exact_solve", "margins", "shrink", "shrinkage_params"]
