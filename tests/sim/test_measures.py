"""Purification measures: known values, and invariance under permutations and rotations."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.stats import ortho_group

from sim import measures
from sim.model.config import ModelConfig
from sim.model.network import TwoLayerNet


def test_known_split():
    M = np.eye(4)
    wstar = np.array([1.0, -1.0, 1.0, 1.0])
    W = np.array([[2.0, -0.1, 0.1, 0.1]])  # atom 0 (+, votes w*_0 = +1) plus a dense part along w*
    d = measures.dense_measures(W, M, wstar, threshold=0.5)
    assert d["principal_atom"][0] == 0 and d["n_principal"][0] == 1
    np.testing.assert_allclose(d["dense_ratio"], np.sqrt(0.03) / 2)
    np.testing.assert_allclose(d["dense_cos"], 0.3 / (np.sqrt(0.03) * 2))
    p = measures.purification(W, np.array([[1.0, 0.0, 0.0, 0.0]]), M)
    np.testing.assert_allclose(p["beta"], 2.0)
    np.testing.assert_allclose(p["v_norm"], np.sqrt(0.03))
    assert p["purified"][0] and np.isclose(p["dense_share_of_v"][0], 1.0)


@given(seed=st.integers(0, 10_000), m=st.integers(2, 12), d=st.integers(2, 8))
def test_invariant_under_permutation_and_rotation(seed, m, d):
    rng = np.random.default_rng(seed)
    M = ortho_group.rvs(d, random_state=seed) if d > 1 else np.eye(1)
    wstar = rng.choice([-1.0, 1.0], d)
    W, Wa, W0 = rng.standard_normal((3, m, d))
    X = rng.standard_normal((20, d))
    net = TwoLayerNet(W, ModelConfig(bias="fixed", bias_value=0.2))
    base = measures.summarize_dense(net, M, wstar, X)
    basep = measures.summarize_purification(W, Wa, W0, M)
    perm = rng.permutation(m)
    R = ortho_group.rvs(d, random_state=seed + 1)
    for Wt, Wat, W0t, Mt, Xt in ((W[perm], Wa[perm], W0[perm], M, X), (W @ R.T, Wa @ R.T, W0 @ R.T, R @ M, X @ R.T)):
        nt = TwoLayerNet(Wt, ModelConfig(bias="fixed", bias_value=0.2))
        for k, v in measures.summarize_dense(nt, Mt, wstar, Xt).items():
            np.testing.assert_allclose(v, base[k], rtol=1e-9, atol=1e-12, err_msg=k)
        for k, v in measures.summarize_purification(Wt, Wat, W0t, Mt).items():
            np.testing.assert_allclose(v, basep[k], rtol=1e-9, atol=1e-12, err_msg=k)


def test_dictionary_picture_shows_each_neurons_principal_atom():
    """The atoms drawn include every shown neuron's principal atom, wherever it is (the
    report once drew atoms 0-63 whatever the neurons' atoms were)."""
    rng = np.random.default_rng(3)
    D, m = 300, 40
    C0 = 0.01 * rng.standard_normal((m, D))
    principal = rng.choice(np.arange(100, D), size=m, replace=False)  # all beyond atom 63
    C0[np.arange(m), principal] = rng.uniform(1, 2, m) * rng.choice([-1, 1], m)
    Ca = C0 + 0.01 * rng.standard_normal((m, D))
    pic = measures.dictionary_picture(C0, Ca, n_neurons=24, n_atoms=64)
    shown = pic["neurons"]
    assert len(shown) == 24 and len(pic["atoms"]) == 64 and np.all(np.diff(pic["atoms"]) > 0)
    assert set(principal[shown]) <= set(pic["atoms"].tolist())
    col = {a: j for j, a in enumerate(pic["atoms"])}
    for row, i in enumerate(shown):  # each row peaks (value 1) at its own principal atom
        assert pic["clean"][row, col[principal[i]]] == pytest.approx(1.0)
    assert pic["clean"].shape == pic["adv"].shape == (24, 64) and pic["clean"].dtype == np.float32


def test_readable_purification_on_constructed_weights():
    """Four neurons in the identity dictionary: two keep their atom and are purified (the
    dense part removed), one keeps its atom but is rebuilt, one switches atom; the readable
    C4 numbers count them as such."""
    from sim.measures import by_margin, principal_share, readable_purification

    D = 8
    M = np.eye(D)
    dense = np.full(D, 0.1)
    Wc = np.array([np.eye(D)[0] + dense, np.eye(D)[1] + dense, np.eye(D)[2] + dense, np.eye(D)[3] + dense])
    Wa = np.array([np.eye(D)[0], 2 * np.eye(D)[1], np.eye(D)[2] - 3 * dense, np.eye(D)[5]])
    r = readable_purification(Wc, Wa, M)
    assert r["principal_kept_share"] == 0.75
    assert r["purified_share_kept"] == pytest.approx(2 / 3)
    top = principal_share(Wc, M)
    np.testing.assert_allclose(top, 1.1 / np.sqrt(1.1 ** 2 + 7 * 0.01))
    assert r["clean_top_atom_share_median"] == pytest.approx(top[0])
    # principal part at threshold 0.5: the one large atom
    assert r["clean_principal_norm_share_median"] == pytest.approx(top[0])
    bm = by_margin(np.array([True, False, True, True]), np.array([0, 0, 2, 2]))
    assert bm == {"1": {"acc": 0.5, "n": 2}, "2": {"acc": None, "n": 0}, ">=3": {"acc": 1.0, "n": 2}}
