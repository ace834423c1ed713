"""Certificates and the exact verifier (issue 4): certified <= exact <= attacked per sample,
the exact value against a dense search in d = 1, 2, monotonicity in the radius, the
orthonormal-row closed form, the quadratic bound on dead zones, the Numba kernels against
their NumPy references, and named errors."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim import attacks
from sim.certify import (METHODS, NORMS, box_quadratic_bound, certify, certify_gap_diagnosis, certify_radii, margins,
                         shrinkage_params)
from sim.certify import bounds as cmod
from sim.certify import quadratic
from sim.certify.exact import bn_levels, exact_check, exact_min_margin, exact_solve
from sim.model.config import ModelConfig
from sim.model.network import TwoLayerNet
from tests import naive

TOL = 1e-5  # HiGHS works to feasibility tolerances of about 1e-7 per row


def small_net(rng, m, d, bias):
    return TwoLayerNet(rng.standard_normal((m, d)), ModelConfig(bias="fixed", bias_value=bias))


@st.composite
def problems(draw, dims=(1, 4), widths=(1, 6), n=(1, 3)):
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    d, m = draw(st.integers(*dims)), draw(st.integers(*widths))
    net = small_net(rng, m, d, draw(st.floats(0.0, 0.6)))
    X = rng.standard_normal((draw(st.integers(*n)), d))
    y = np.where(net.forward(X) >= 0, 1.0, -1.0)
    y[rng.random(len(y)) < 0.15] *= -1
    return net, X, y, draw(st.sampled_from(NORMS)), draw(st.floats(0.0, 1.2))


def grid_min(net, x, y, tau, norm):
    """Dense search over the ball in d = 1, 2 and the grid's covering radius h (l2 distance)."""
    d = len(x)
    if d == 1:
        D = np.linspace(-tau, tau, 40001)[:, None]
        h = tau / 40000
    elif norm == "linf":
        g = np.linspace(-tau, tau, 601)
        D = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
        h = np.sqrt(2) * tau / 600
    else:
        rad, ang = np.linspace(0, tau, 301), np.linspace(0, 2 * np.pi, 1441)
        D = np.stack([np.outer(rad, np.cos(ang)).ravel(), np.outer(rad, np.sin(ang)).ravel()], 1)
        h = tau / 300 + tau * np.pi / 1440
    return float(margins(net, x[None, :] + D, np.full(len(D), y)).min()), h


@settings(max_examples=25)
@given(problems())
def test_certified_le_exact_le_attacked(p):
    net, X, y, norm, tau = p
    cert = certify(net, X, y, tau, norm, steps=60, qsteps=60, tight=True)  # every bound on every sample
    att = attacks.pgd(net, X, y, tau, norm, steps=20, restarts=3)
    for i in range(len(X)):
        ex = exact_solve(net, X[i], y[i], tau, norm, time_limit=20)
        assert ex.status == "optimal", ex.status
        # certified <= exact (the exact value is the margin at a perturbation in the ball)
        assert cert.lower[i] <= ex.value + 1e-12
        for name, low in cert.per_method.items():
            assert low[i] <= ex.value + 1e-12, name
        # exact <= attacked (the exact minimum is at most any attack's margin)
        assert ex.lower <= att.margin[i] + TOL * max(1, abs(att.margin[i]))
        assert ex.lower <= ex.value + 1e-9
        assert ex.value - ex.lower <= TOL * max(1, abs(ex.value)) + 1e-9
        dist = np.abs(ex.delta).max() if norm == "linf" else np.linalg.norm(ex.delta)
        assert dist <= tau * (1 + 1e-12) + 1e-15
        if cert.certified[i]:
            assert not att.success[i] and ex.robust
    # 'best' is the max of the sound bounds, and they are ordered as built
    np.testing.assert_array_equal(cert.lower, np.max(np.stack(list(cert.per_method.values())), 0))
    assert np.all(cert.per_method["dual"] >= cert.per_method["linear"])
    assert np.all(cert.per_method["quadratic"] >= cert.per_method["dual"])
    assert cert.certified_accuracy == np.mean(cert.lower > 0)


@settings(max_examples=30)
@given(problems(dims=(1, 2), widths=(1, 5), n=(1, 1)))
def test_exact_matches_dense_search_in_dimension_1_and_2(p):
    net, X, y, norm, tau = p
    x, yy = X[0], y[0]
    value, status = exact_min_margin(net, x, yy, tau, norm, time_limit=20)
    ex = exact_solve(net, x, yy, tau, norm, time_limit=20)
    assert status == "optimal" and abs(value - ex.value) <= 1e-9 * max(1, abs(value))
    gmin, h = grid_min(net, x, yy, tau, norm)
    lip = np.linalg.norm(net.W, axis=1).sum()  # l2 Lipschitz constant of f
    assert ex.lower <= gmin + TOL  # no grid point beats the proven lower bound
    assert gmin <= ex.value + lip * h + 1e-12  # the grid comes within its resolution of the optimum


@settings(max_examples=12)
@given(problems(dims=(1, 5), widths=(1, 8), n=(2, 6)), st.floats(0.0, 1.0))
def test_bounds_monotone_in_radius(p, frac):
    net, X, y, norm, tau = p
    taus = [frac * tau, tau, 1.5 * tau]
    # interval: exactly monotone per sample
    lows = [certify(net, X, y, t, norm, "interval").lower for t in taus]
    assert np.all(lows[0] >= lows[1]) and np.all(lows[1] >= lows[2])
    # every method through certify_radii
    for method in METHODS:
        res = certify_radii(net, X, y, taus, norm, method, steps=30)
        assert np.all(res[0].lower >= res[1].lower) and np.all(res[1].lower >= res[2].lower)
        accs = [r.certified_accuracy for r in res]
        assert accs[0] >= accs[1] >= accs[2]
    # the exact worst case too (it is a true minimum over nested balls)
    ex = [exact_solve(net, X[0], y[0], t, norm, time_limit=20) for t in taus]
    assert ex[0].value >= ex[1].lower - TOL and ex[1].value >= ex[2].lower - TOL


def waterfill(e, tau):
    """min sum_i (e_i - s_i)^+ over |s|_2 <= tau: s_i = min(e_i^+, theta), sum s_i^2 = tau^2."""
    e = np.maximum(e, 0.0)
    if np.sum(e ** 2) <= tau ** 2:
        return 0.0, e
    lo, hi = 0.0, float(e.max())
    for _ in range(200):
        th = 0.5 * (lo + hi)
        lo, hi = (lo, th) if np.sum(np.minimum(e, th) ** 2) > tau ** 2 else (th, hi)
    s = np.minimum(e, 0.5 * (lo + hi))
    return float(np.sum(e - s)), s


@settings(max_examples=25)
@given(st.integers(0, 2**31 - 1))
def test_orthonormal_rows_closed_form(seed):
    """W with orthonormal rows: W delta ranges over the whole l2 ball of R^m, and if no
    interval [c_i - tau, c_i + tau] reaches a concave kink -b_i, the worst case is
    water-filling: push the neurons above their threshold down by min(c_i - b_i, theta).
    The optimised dual certificate must equal it (the relaxation is exact there)."""
    rng = np.random.default_rng(seed)
    d = int(rng.integers(1, 12))
    m = int(rng.integers(1, d + 1))
    Q, _ = np.linalg.qr(rng.standard_normal((d, m)))
    W = Q.T
    b = float(rng.uniform(0, 0.5))
    tau = float(rng.uniform(0.05, 1.0))
    c = rng.uniform(-b + tau + 1e-3, b + 2 * tau, size=m)  # many neurons cross +b, none reaches -b
    x = W.T @ c
    net = TwoLayerNet(W, ModelConfig(bias="fixed", bias_value=b))
    value, s = waterfill(c - b, tau)
    delta = -W.T @ s  # the analytic worst perturbation, |delta| = min(tau, |e^+|)
    assert np.linalg.norm(delta) <= tau * (1 + 1e-12)
    np.testing.assert_allclose(margins(net, x + delta, np.array([1.0]))[0], value, atol=1e-12)
    cert = certify(net, x[None, :], np.array([1.0]), tau, "l2", "best", steps=300, tight=True)
    assert cert.lower[0] <= value + 1e-12
    np.testing.assert_allclose(cert.lower[0], value, rtol=1e-7, atol=1e-7)
    ex = exact_solve(net, x, 1.0, tau, "l2", time_limit=20)
    np.testing.assert_allclose(ex.value, value, rtol=1e-6, atol=1e-9)
    # PGD cannot do better than the closed form
    assert attacks.pgd(net, x[None, :], np.array([1.0]), tau, "l2", steps=30, restarts=2).margin[0] >= value - 1e-9


def test_interval_is_the_independent_worst_case_and_tau_zero_is_the_margin():
    rng = np.random.default_rng(3)
    net = small_net(rng, 7, 5, 0.3)
    X = rng.standard_normal((9, 5))
    y = np.where(net.forward(X) >= 0, 1.0, -1.0)
    for norm in NORMS:
        for method in METHODS:
            r = certify(net, X, y, 0.0, norm, method, steps=5)
            np.testing.assert_allclose(r.lower, y * net.forward(X), atol=1e-9)
            assert r.method == method and r.seconds >= 0 and r.certified.dtype == bool
    # one neuron: interval, linear, dual and exact all coincide with margin - r
    one = TwoLayerNet(np.array([[0.6, -0.8]]), ModelConfig(bias="fixed", bias_value=0.1))
    X1 = np.array([[3.0, 0.0]])
    for norm, dn in (("l2", 1.0), ("linf", 1.4)):
        expect = (1.8 - 0.5 * dn) - 0.1
        for method in METHODS:
            np.testing.assert_allclose(certify(one, X1, np.ones(1), 0.5, norm, method).lower, [expect], atol=1e-9)
        np.testing.assert_allclose(exact_min_margin(one, X1[0], 1.0, 0.5, norm)[0], expect, atol=1e-9)


def test_exact_check_and_gap_diagnosis():
    rng = np.random.default_rng(5)
    net = small_net(rng, 8, 3, 0.2)
    X = rng.standard_normal((30, 3))
    y = np.where(net.forward(X) >= 0, 1.0, -1.0)
    tau = 0.4
    chk = exact_check(net, X, y, tau, "linf", max_samples=6, time_limit=10)
    assert len(chk.indices) == 6 and sum(chk.counts().values()) == 6
    for i, rob, v in zip(chk.indices, chk.robust, chk.value):
        assert rob is not None and rob == (v > 0)
    cert = certify(net, X, y, tau, "linf")
    # a deliberately weak "attack" (breaks nothing): every uncertified point is a gap point
    weak = y * net.forward(X) <= 0
    diag = certify_gap_diagnosis(net, X, y, tau, "linf", weak, n_exact=8, cert=cert, time_limit=10)
    assert diag["flagged"] and diag["n_checked"] == min(8, diag["n_gap_points"])
    assert diag["robust"] + diag["broken"] + diag["undecided"] == diag["n_checked"]
    assert diag["broken"] > 0 and "attack weak" in diag["verdict"] or "bound loose" in diag["verdict"]
    # with the exact answer as the attack, the gap that remains is the bound's looseness
    exact_broken = np.array([exact_solve(net, X[i], y[i], tau, "linf", time_limit=10).value <= 0
                             for i in range(len(X))])
    diag2 = certify_gap_diagnosis(net, X, y, tau, "linf", exact_broken, n_exact=8, cert=cert, time_limit=10,
                                  threshold=0.0)
    assert diag2["broken"] == 0 and diag2["certified_but_attacked"] == 0
    if diag2["n_checked"]:
        assert "bound loose" in diag2["verdict"]
    small = certify_gap_diagnosis(net, X, y, tau, "linf", exact_broken, cert=cert, threshold=1.0)
    assert not small["flagged"] and small["n_checked"] == 0 and "agree" in small["verdict"]


def test_ben_tal_nemirovski_levels():
    assert bn_levels(2, 1e-4) < bn_levels(2, 1e-8)
    nu = bn_levels(256, 1e-6)
    assert (1 / np.cos(np.pi / 2 ** (nu + 1))) ** 8 - 1 <= 1e-6


def test_bad_inputs_are_named():
    net = TwoLayerNet(np.ones((2, 3)), ModelConfig(bias="fixed", bias_value=0.1))
    X, y = np.zeros((1, 3)), np.ones(1)
    with pytest.raises(ValueError, match="norm='l1'"):
        certify(net, X, y, 0.1, "l1")
    with pytest.raises(ValueError, match="method='lp'"):
        certify(net, X, y, 0.1, "l2", "lp")
    with pytest.raises(ValueError, match=r"tau=-1"):
        certify(net, X, y, -1, "l2")
    with pytest.raises(ValueError, match=r"tau=nan"):
        certify(net, X, y, float("nan"), "linf")
    with pytest.raises(ValueError, match="norm='l1'"):
        exact_min_margin(net, X[0], 1.0, 0.1, "l1")
    with pytest.raises(ValueError, match=r"tau=-0.5"):
        exact_check(net, X, y, -0.5, "linf")
    with pytest.raises(ValueError, match="X of shape"):
        certify(net, np.zeros((1, 4)), y, 0.1)
    with pytest.raises(ValueError, match="y is invalid"):
        certify(net, X, np.zeros(1), 0.1)
    smooth = TwoLayerNet(np.ones((2, 3)), ModelConfig(bias="fixed", bias_value=0.1, activation="smooth_relu"))
    with pytest.raises(ValueError, match="activation='smooth_relu'"):
        certify(smooth, X, y, 0.1)
    neg = TwoLayerNet(np.ones((2, 3)), ModelConfig(bias="fixed", bias_value=-0.1))
    with pytest.raises(ValueError, match="bias b_i=-0.1"):
        shrinkage_params(neg)
    with pytest.raises(ValueError, match="attacked_broken_mask"):
        certify_gap_diagnosis(net, X, y, 0.1, "l2", np.zeros(3, bool))


def test_quadratic_bound_certifies_dead_zones_that_the_linear_relaxation_cannot():
    """W = I (d = m = 100), b = 0.5, l2 tau = 0.6, x = 2 e_1: the margin is 1.5 and the worst
    case is 0.9 (all the budget on neuron 1; a dead neuron must move 0.5 before it counts, so
    at most one can cross and that gains at most 0.1). Each of the 99 dead neurons has an
    interval [-0.6, 0.6] straddling both kinks: its convex envelope loses 0.045 at v = 0, 4.5
    in all, so 'dual' cannot certify; the quadratic bound loses tau^2 gamma lambda_max(W^T W)
    ~ 0.18 in all and does."""
    d = 100
    net = TwoLayerNet(np.eye(d), ModelConfig(bias="fixed", bias_value=0.5))
    x = np.zeros(d)
    x[0] = 2.0
    res = certify(net, x[None, :], np.ones(1), 0.6, "l2")
    assert res.per_method["dual"][0] < 0 < res.per_method["quadratic"][0] <= 0.9 + 1e-12
    assert res.lower[0] > 0.6 and res.certified_accuracy == 1.0
    assert attacks.pgd(net, x[None, :], np.ones(1), 0.6, "l2", steps=50, restarts=3).margin[0] >= 0.9 - 1e-9
    # same in l_inf (tau = 0.06, |delta|_2 <= 0.6): every dead neuron straddles no kink, certified
    assert certify(net, x[None, :], np.ones(1), 0.06, "linf").certified[0]


def test_kernels_match_the_numpy_references():
    rng = np.random.default_rng(11)
    n, m, d = 7, 9, 5
    W = rng.standard_normal((m, d))
    b = rng.uniform(0, 0.5, m)
    X = rng.standard_normal((n, d))
    y = np.where(rng.random(n) < 0.5, 1.0, -1.0)
    for norm in NORMS:
        for tau in (0.0, 0.3, 2.0):
            blk = cmod._block(W, b, X, y, tau, norm)
            A = rng.uniform(0, 1, (n, m))
            Gm = np.where(rng.random((n, m)) < 0.3, 0.0, rng.exponential(2.0, (n, m)))
            for got, ref in ((cmod._beta(blk.G, blk.V, A), naive.beta_np(blk.G, blk.V, A)),
                             (cmod._kappa(blk.C, blk.V, b, A, Gm), naive.kappa_np(blk.C, blk.V, b, A, Gm))):
                np.testing.assert_allclose(got[0], ref[0], rtol=1e-13, atol=1e-13)
                np.testing.assert_allclose(got[1], ref[1], rtol=1e-13, atol=1e-13)
            lo, hi = cmod._pieces(blk)
            Z, T = rng.normal(0.5, 1, (n, m)), rng.exponential(1.0, n)
            np.testing.assert_allclose(cmod._prox(Z, T, blk.V, blk.G, lo, hi), naive.prox_np(Z, T, blk.V, blk.G, lo, hi),
                                       rtol=1e-12, atol=1e-12)
            # kappa is the minimum over the interval: no point of a fine grid is lower
            grid = np.linspace(-1, 1, 2001)[None, None, :] * blk.r[None, :, None]
            phi = (cmod.shrink(blk.C[..., None] + grid, b[None, :, None]) - A[..., None] * grid
                   + Gm[..., None] * grid ** 2)
            assert np.all(naive.kappa_np(blk.C, blk.V, b, A, Gm)[0] <= phi.min(-1) + 1e-12)
    s = np.sort(rng.exponential(1.0, d))
    gb = rng.exponential(1.0, n)
    Ut = rng.standard_normal((n, d))
    got, ref = quadratic._trs(Ut, s, gb, 0.7), quadratic.trs_np(Ut, gb[:, None] * s[None, :], 0.7)
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g, r, rtol=1e-10, atol=1e-12)


@settings(max_examples=25)
@given(st.integers(0, 2**31 - 1), st.floats(0.05, 2.0))
def test_trust_region_value_is_the_minimum_over_the_disk(seed, tau):
    rng = np.random.default_rng(seed)
    B = rng.standard_normal((2, 2))
    Amat = B @ B.T
    lam, V = np.linalg.eigh(Amat)
    u = rng.standard_normal(2) * rng.choice([0.01, 1.0, 10.0])
    val, Dt, _ = quadratic.trs_np((u @ V)[None, :], lam[None, :], tau)
    rad, ang = np.linspace(0, tau, 401), np.linspace(0, 2 * np.pi, 1801)
    P = np.stack([np.outer(rad, np.cos(ang)).ravel(), np.outer(rad, np.sin(ang)).ravel()], 1)
    dense = np.min(P @ u - np.einsum("ij,jk,ik->i", P, Amat, P))
    assert val[0] <= dense + 1e-12  # a lower bound ...
    assert val[0] >= dense - 1e-5 * (1 + abs(dense)) - 1e-6 * (1 + lam[-1]) * tau ** 2  # ... and tight


def test_box_quadratic_bound_is_sound_and_beats_the_eigenvalue_bound():
    rng = np.random.default_rng(4)
    for d in (1, 3, 8, 10):
        B = rng.standard_normal((d + 3, d))
        A = B.T @ B
        signs = np.array(np.meshgrid(*[[-1.0, 1.0]] * d)).reshape(d, -1).T
        exact = np.max(np.einsum("ij,jk,ik->i", signs, A, signs))  # a convex form peaks at a corner
        q = box_quadratic_bound(A)
        assert exact <= q <= d * np.linalg.eigvalsh(A)[-1] * (1 + 1e-9) + 1e-12
        assert q <= 1.3 * exact
    assert box_quadratic_bound(np.zeros((0, 0))) == 0.0


def test_focus_restricts_the_optimised_bounds():
    rng = np.random.default_rng(8)
    net = small_net(rng, 12, 6, 0.4)
    X = rng.standard_normal((10, 6))
    y = np.where(net.forward(X) >= 0, 1.0, -1.0)
    full = certify(net, X, y, 0.3, "l2")
    none = certify(net, X, y, 0.3, "l2", focus=np.zeros(10, bool))
    cheap = np.maximum(none.per_method["interval"], none.per_method["linear"])
    np.testing.assert_array_equal(none.lower, cheap)
    assert np.all(full.lower >= none.lower)
    with pytest.raises(ValueError, match="focus"):
        certify(net, X, y, 0.3, "l2", focus=np.zeros(3, bool))


@settings(max_examples=8)
@given(st.integers(0, 2**31 - 1), st.sampled_from(NORMS))
def test_sound_on_dictionary_networks(seed, norm):
    """Networks like the purified ones of the paper (two neurons per dictionary atom, a
    little dense noise, sparse inputs): many dead-zone neurons, where the quadratic bound
    does the work. Every bound stays below the exact worst case."""
    rng = np.random.default_rng(seed)
    d = int(rng.integers(3, 6))
    Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    W = np.repeat(Q.T, 2, axis=0) * rng.uniform(0.8, 1.2, (2 * d, 1)) + 0.1 * rng.standard_normal((2 * d, d))
    net = TwoLayerNet(W, ModelConfig(bias="fixed", bias_value=float(rng.uniform(0.1, 0.4))))
    Z = np.where(rng.random((3, d)) < 0.4, rng.choice([-1.0, 1.0], (3, d)), 0.0)
    X = Z @ Q.T + 0.05 * rng.standard_normal((3, d))
    y = np.where(net.forward(X) >= 0, 1.0, -1.0)
    tau = float(rng.uniform(0.1, 0.6)) if norm == "l2" else float(rng.uniform(0.03, 0.25))
    cert = certify(net, X, y, tau, norm, tight=True)
    for i in range(len(X)):
        ex = exact_solve(net, X[i], y[i], tau, norm, time_limit=20)
        assert ex.status == "optimal"
        for name, low in cert.per_method.items():
            assert low[i] <= ex.value + 1e-12, name
