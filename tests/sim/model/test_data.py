"""The sparse-coding data model: determinism, the margin, the dictionary, the noise."""
import numba
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from threadpoolctl import threadpool_limits

from sim.model.config import ConfigError, DataConfig
from sim.model.data import Problem


def small(**kw):
    base = dict(d=32, k=3.0, n_train=500, n_test=200)
    base.update(kw)
    return DataConfig(**base)


def test_pure_function_of_config():
    a, b = Problem.from_config(small()), Problem.from_config(small())
    np.testing.assert_array_equal(a.M, b.M)
    np.testing.assert_array_equal(a.train_set().x, b.train_set().x)
    np.testing.assert_array_equal(a.online_batch(7, 50).x, b.online_batch(7, 50).x)
    c = Problem.from_config(small(seed=1))
    assert not np.array_equal(a.train_set().x, c.train_set().x)
    assert not np.array_equal(a.online_batch(7, 50).x, a.online_batch(8, 50).x)
    assert not np.array_equal(a.train_set().x, a.test_set().x)


@pytest.mark.parametrize("magnitude", ["pm1", "uniform"])
def test_samples_do_not_depend_on_the_thread_count(magnitude):
    # x = z M^T by a multi-threaded BLAS differed in its last bits between 1 and 2 threads
    # (at d=48, n=700), and with it every FGM and PGD result on those points
    cfg = DataConfig(d=48, k=3.0, magnitude=magnitude, n_train=700, n_test=10)
    runs = []
    for threads in (1, 2):
        saved = numba.get_num_threads()
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        try:
            with threadpool_limits(limits=threads, user_api="blas"):
                p = Problem.from_config(cfg)
                s = p.train_set()
                runs.append((p.M, p.bayes_direction, s.x, s.y, s.z))
        finally:
            numba.set_num_threads(saved)
    for a, b in zip(*runs):
        assert a.tobytes() == b.tobytes()


@given(d=st.integers(2, 40), k=st.floats(0.5, 6.0), dictionary=st.sampled_from(["orthogonal", "identity", "overcomplete"]),
       magnitude=st.sampled_from(["pm1", "uniform"]), noise=st.floats(0.0, 0.5), seed=st.integers(0, 1000))
def test_samples_follow_the_model(d, k, dictionary, magnitude, noise, seed):
    D = 2 * d if dictionary == "overcomplete" else d
    k = min(k, D)
    cfg = DataConfig(d=d, D=D, k=k, dictionary=dictionary, magnitude=magnitude, noise=noise, seed=seed,
                     n_train=200, n_test=10)
    p = Problem.from_config(cfg)
    s = p.train_set()
    assert s.x.shape == (200, d) and s.z.shape == (200, D)
    score = s.z @ p.wstar
    assert np.all(np.abs(score) >= cfg.margin)
    np.testing.assert_array_equal(s.y, np.sign(score))
    assert 0 < s.acceptance_rate <= 1
    nz = np.abs(s.z[s.z != 0])
    if magnitude == "pm1":
        np.testing.assert_array_equal(nz, 1.0)
    else:
        assert np.all((nz >= cfg.a_min) & (nz <= 1.0))
    np.testing.assert_allclose(np.linalg.norm(p.M, axis=0), 1.0, rtol=1e-12)
    if dictionary != "overcomplete":
        np.testing.assert_allclose(p.M.T @ p.M, np.eye(d), atol=1e-12)
    resid = s.x - s.z @ p.M.T
    if noise == 0:
        assert np.all(resid == 0)
    assert set(np.unique(p.wstar)) <= {-1.0, 1.0}


def test_noise_norm_and_sparsity():
    cfg = DataConfig(d=256, k=4.0, noise=0.5, n_train=4000, n_test=10)
    p = Problem.from_config(cfg)
    s = p.train_set()
    resid = np.linalg.norm(s.x - s.z @ p.M.T, axis=1)
    assert abs(np.mean(resid) - 0.5) < 0.01  # total norm sigma * sqrt(d)
    # active atoms: Binomial(D, k/D) conditioned on the margin (which drops z = 0 and ties)
    assert 3.5 < np.mean(np.count_nonzero(s.z, axis=1)) < 5.5


def test_impossible_margin_is_reported():
    cfg = DataConfig(d=8, k=0.01, margin=5.0, n_train=10, n_test=10)
    with pytest.raises(RuntimeError, match="margin"):
        Problem.from_config(cfg).train_set()


@pytest.mark.parametrize("k,expected_rate", [(3.0, 1.0), (2.6, 1.0), (4.0, 1 - 6 / 16), (2.0, 0.5)])
def test_exact_sparsity(k, expected_rate):
    """sparsity='exact': every sample has exactly round(k) atoms, reproducibly, and the
    margin redraw still applies. With pm1 codes, <w*, z> is a sum of round(k) random signs:
    odd counts never reach 0 (nothing redrawn at margin 1), even counts reach 0 with
    probability C(k, k/2) / 2^k, which sets the acceptance rate."""
    cfg = DataConfig(d=64, k=k, sparsity="exact", n_train=4000, n_test=10, seed=3)
    p = Problem.from_config(cfg)
    s = p.train_set()
    n_act = int(np.floor(k + 0.5))
    assert cfg.n_active() == n_act
    np.testing.assert_array_equal(np.count_nonzero(s.z, axis=1), n_act)
    score = s.z @ p.wstar
    assert np.all(np.abs(score) >= 1)
    np.testing.assert_array_equal(s.y, np.sign(score))
    assert abs(s.acceptance_rate - expected_rate) < 0.03
    # every atom is used about equally often (uniform without replacement)
    use = np.count_nonzero(s.z, axis=0) / (4000 * n_act / 64)
    assert use.min() > 0.6 and use.max() < 1.4
    np.testing.assert_array_equal(s.x, Problem.from_config(cfg).train_set().x)
    # a larger margin redraws the rest: k = 5 exact keeps |<w*, z>| in {3, 5}
    s5 = Problem.from_config(cfg.replace(k=5.0, margin=3.0)).train_set()
    assert set(np.unique(np.abs(s5.z @ p.wstar))) == {3.0, 5.0}
    assert abs(s5.acceptance_rate - 12 / 32) < 0.03


def test_sparsity_is_validated():
    with pytest.raises(ConfigError, match="sparsity"):
        DataConfig(sparsity="poisson")
    with pytest.raises(ConfigError, match="k="):
        DataConfig(k=0.4, sparsity="exact")
    assert DataConfig().sparsity == "bernoulli"
