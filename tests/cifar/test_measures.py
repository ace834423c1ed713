"""Purification measures: beta_i, v_i, the share with |beta_i w'_i| > |v_i|, correlations."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cifar.measures import compare, cosine_rows, matched_abs_cosine, purification, relative_distance


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), out=st.integers(1, 12), fan=st.integers(2, 40))
def test_recovers_planted_decomposition(seed, out, fan):
    # planted in float64: the split is computed in float64 (sim.measures), and a float32 plant
    # carries its own rounding of w = beta w' + v (2e-6 relative in beta at seed 511, fan 2)
    g = torch.Generator().manual_seed(seed)
    wp = torch.randn(out, fan, generator=g, dtype=torch.float64)
    beta = torch.randn(out, generator=g, dtype=torch.float64) * 2
    v = torch.randn(out, fan, generator=g, dtype=torch.float64)
    v = v - ((v * wp).sum(1) / (wp * wp).sum(1))[:, None] * wp  # v orthogonal to w'
    w = beta[:, None] * wp + v
    p = purification(w, wp)
    np.testing.assert_allclose(p["beta"], beta.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(p["v_norm"], v.double().norm(dim=1).numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(p["proj_norm"], (beta.abs() * wp.double().norm(dim=1)).numpy(), rtol=1e-6, atol=1e-6)
    # the criterion is |cos(w, w')| > 1/sqrt(2), and |beta w'|^2 + |v|^2 = |w|^2
    clear = np.abs(np.abs(p["cos"]) - 1 / math.sqrt(2)) > 1e-9  # away from the tie
    np.testing.assert_array_equal(p["dominated"][clear], (np.abs(p["cos"]) > 1 / math.sqrt(2))[clear])
    np.testing.assert_allclose(p["proj_norm"] ** 2 + p["v_norm"] ** 2, w.double().norm(dim=1).numpy() ** 2, rtol=1e-6)


def test_conv_shapes_and_degenerate_cases():
    w = torch.randn(6, 3, 3, 3)
    p = purification(w, w)
    assert p["dominated"].all() and np.allclose(p["beta"], 1) and np.allclose(p["v_norm"], 0, atol=1e-9)
    p = purification(w, -0.5 * w)
    assert np.allclose(p["beta"], -2) and p["dominated"].all()
    zero = torch.zeros_like(w)
    p = purification(w, zero)
    assert np.all(p["beta"] == 0) and not p["dominated"].any()
    with pytest.raises(ValueError, match="shapes differ"):
        purification(w, torch.randn(6, 3, 1, 1))


def test_orthogonal_weights_are_not_dominated():
    wp = torch.eye(4)
    w = torch.roll(torch.eye(4), 1, dims=1)  # each w_i orthogonal to w'_i
    p = purification(w, wp)
    assert not p["dominated"].any() and np.allclose(p["beta"], 0)


def test_compare_summaries_and_controls():
    g = torch.Generator().manual_seed(0)
    init = {"a": torch.randn(8, 3, 3, 3, generator=g), "b": torch.randn(10, 8, generator=g)}
    clean = {k: v + 3 * torch.randn(v.shape, generator=g) for k, v in init.items()}  # far from init
    adv = {k: v + 0.2 * torch.randn(v.shape, generator=g) for k, v in clean.items()}  # near clean
    c = compare(clean, adv, init=init, adv_init=clean, match_first=True)
    assert [r["layer"] for r in c["layers"]] == ["a", "b"]
    assert c["overall"]["neurons"] == 18 and c["overall"]["share_dominated"] == 1.0
    assert c["overall"]["control_share_clean_vs_init"] < 0.5  # clean moved away from init
    row = c["layers"][0]
    assert row["rel_dist_clean_from_init"] > 1 and row["rel_dist_adv_from_clean"] < 0.2
    assert row["rel_dist_adv_from_own_init"] == pytest.approx(row["rel_dist_adv_from_clean"])
    assert row["cos_clean_adv"]["median"] > 0.9 and abs(row["cos_clean_init"]["median"]) < 0.6
    assert 0.9 < row["matched_abs_cos_clean_adv"] <= 1
    assert set(c["neurons"]["b"]) >= {"beta", "proj_norm", "v_norm", "cos", "cos_clean_init", "cos_adv_init"}


def test_matching_undoes_permutations():
    w = torch.randn(16, 27)
    perm = torch.randperm(16)
    assert matched_abs_cosine(w, -w[perm]) == pytest.approx(1.0)
    assert np.abs(cosine_rows(w, w[perm])).mean() < 0.9
    assert relative_distance(w, w) == 0
