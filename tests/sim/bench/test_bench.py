"""`python -m sim bench`: the references compute the same maths as the engine, the harness
runs end to end on a tiny grid and writes its JSON. Nothing here is timed."""
import argparse
import json
import sys

import numpy as np
import pytest
import torch

from sim import bench, cli
from sim.bench import harness, references
from sim.common.validation import ConfigError
from sim.model.config import ModelConfig
from sim.model.network import TwoLayerNet


@pytest.fixture(scope="module")
def small():
    inst = bench.make_instance(bench.Cell(24, 300, "float64", k=2.0), seed=1)
    net = TwoLayerNet(inst.W, ModelConfig())
    for _ in range(10):  # away from the init, so that the attacks move points across the kinks
        net.W = harness.engine_step(net, inst.X, inst.y)
    return inst, net


def test_instance_follows_the_model():
    inst = bench.make_instance(bench.Cell(16, 200, "float32", k=2.0, noise=0.0), seed=0, keep_codes=True)
    assert inst.X.dtype == np.float32 and inst.W.shape == (32, 16)
    np.testing.assert_allclose(inst.X, inst.codes.to_dense() @ inst.M.T, atol=1e-6)
    assert set(np.unique(inst.y)) <= {-1.0, 1.0}
    assert inst.budget_bytes == 2 * (inst.X.nbytes + inst.y.nbytes + inst.W.nbytes + 200 * 32 * 4)


def test_references_compute_the_same_maths(small):
    inst, net = small
    X, y, W, beta = inst.X, inst.y, net.W, net.beta
    Xt, Wt, yt = torch.from_numpy(X), torch.from_numpy(W), torch.from_numpy(y)
    ref = harness.engine_step(net, X, y)
    np.testing.assert_allclose(references.np_step(W, X, y, beta), ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(references.torch_step(Wt, Xt, yt, beta).numpy(), ref, rtol=0, atol=1e-12)
    ref = harness.engine_fgm_step(net, X, y)
    np.testing.assert_allclose(harness.alt_fgm_step(net, X, y), ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(references.np_fgm_step(W, X, y, beta), ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(references.torch_fgm_step(Wt, Xt, yt, beta).numpy(), ref, rtol=0, atol=1e-12)
    ref = harness.engine_pgd(net, X, y)
    assert np.mean(ref <= 0) > np.mean(y * net.forward(X) <= 0)  # the attack does something
    np.testing.assert_allclose(harness.alt_pgd(net, X, y), ref, rtol=0, atol=1e-10)
    np.testing.assert_allclose(references.np_pgd(W, X, y, beta), ref, rtol=0, atol=1e-10)
    np.testing.assert_allclose(references.torch_pgd(Wt, Xt, yt, beta).numpy(), ref, rtol=0, atol=1e-10)


def test_blas_limits_do_the_products(small):
    inst, net = small
    X, W = inst.X, net.W
    assert references.blas_step(W, X).shape == W.shape
    assert references.blas_fgm(W, X).shape == W.shape
    assert references.blas_pgd(W, X, steps=2).shape == (len(X), len(W))


def test_peak_memory_sees_an_allocation():
    with bench.PeakMemory() as pm:
        a = np.ones(50_000_000 // 8)
        a += 1
    if pm.extra is None:
        pytest.skip("no /proc/self/clear_refs here")
    assert pm.extra >= 40_000_000
    del a


def test_harness_end_to_end(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    cli.add_bench_command(sub)
    out = tmp_path / "bench.json"
    args = parser.parse_args(["bench", "--sizes", "32x200", "--dtypes", "float64", "--sparse", "32x200x2", "--repeats", "2",
                              "--sparse-repeats", "1", "--n-eval", "40", "--threads", "1", "--json", str(out),
                              "--quiet"])
    assert args.func(args) == 0
    doc = json.loads(out.read_text())
    assert doc["threads"] == 1 and len(doc["dense"]) == 1
    cell = doc["dense"][0]
    assert cell["cell"]["d"] == 32 and cell["cell"]["m"] == 64
    for op in bench.OPS:
        r = cell["ops"][op]
        assert set(r) >= {"engine", "numpy", "torch", "blas"}
        assert len(r["engine"]["times"]) == 2 and all(t > 0 for t in r["engine"]["times"])
        assert set(r["engine"]["ratios"]) >= {"numpy", "torch", "blas"}
        if op != "step":
            assert "alt" in r and "numpy" in r["alt"]["ratios"]
    sp = doc["sparse"]
    assert sp["grad_rel_diff"] < 1e-2
    for op in bench.OPS:
        assert "dense" in sp["ops"][op]["sparse"]["ratios"]
    text = capsys.readouterr().out
    assert "d=32 N=200" in text and "sparse path" in text


def test_bad_arguments_are_named():
    with pytest.raises(ConfigError, match="DxN"):
        bench.parse_sizes("1024,5000")
    with pytest.raises(SystemExit):  # the command line makes it a usage error (exit status 2)
        cli.main(["bench", "--sizes", "1024,5000"])
    assert bench.parse_sizes("256x5000, 1024x10000") == [(256, 5000), (1024, 10000)]
    with pytest.raises(ConfigError, match="--ops"):
        bench.bench_config(ops="train")
    assert cli.main(["bench", "--ops", "train", "--quiet"]) == 2
