"""Claim C5, the complexity lower bound: linear classifiers, low-degree polynomials and the
neural tangent kernel of the network, trained clean and adversarially on the network's
data and attacked at the network's radius.

    lower_bound_table(problem, train, test, tau, norm, *, scale, seed, n_eval, quiet) -> rows
    format_table(rows) -> str
    c5_claims(rows, norm, tau, net_robust) -> claims split by class (sim.lowerbound.claims)

Every model exposes forward(X) -> f and output_gradient(X) -> (df/dx, f), so sim.attacks
works on it. `python -m sim lowerbound` (or `python -m sim.lowerbound`) prints the table for a data config.
"""
from .linear import LinearModel, fit_logistic, fit_robust_accuracy, fit_robust_logistic
from .ntk import NTKModel, SmoothedNTK, activation_probability, ntk_infinite
from .polynomial import PolynomialModel, kappa_coefficients
from .atoms import AtomPolynomial, lagrangian_certificate, monomial_coefficients, step_coefficients, threat_box
from .claims import c5_claims
from .table import Budget, OraclePolynomial, format_table, lower_bound_table

__all__ = ["AtomPolynomial", "lagrangian_certificate", "monomial_coefficients", "step_coefficients", "threat_box",
           "c5_claims", "fit_robust_accuracy", "LinearModel", "fit_logistic", "fit_robust_logistic", "NTKModel",
           "SmoothedNTK", "activation_probability",
           "ntk_infinite", "PolynomialModel", "kappa_coefficients", "Budget", "OraclePolynomial", "format_table",
           "lower_bound_table"]
