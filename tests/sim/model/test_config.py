"""Invalid configurations stop before any work, with the parameter, value and range named."""
import subprocess
import sys

import pytest

from sim.model.config import ConfigError, DataConfig, ModelConfig, RunConfig, TrainConfig

BAD = [
    (DataConfig, dict(k=300), "k=300", "(0, 256]"),
    (DataConfig, dict(k=0), "k=0", "(0, 256]"),
    (DataConfig, dict(k=-1), "k=-1", "(0, 256]"),
    (DataConfig, dict(noise=-0.1), "noise=-0.1", "[0, inf]"),
    (DataConfig, dict(a_min=0.0), "a_min=0.0", "(0, 1]"),
    (DataConfig, dict(a_min=1.5), "a_min=1.5", "(0, 1]"),
    (DataConfig, dict(D=128), "D=128", "D == d"),
    (DataConfig, dict(dictionary="overcomplete", D=256), "D=256", "D > d"),
    (DataConfig, dict(dictionary="dense"), "dictionary='dense'", "'orthogonal'"),
    (DataConfig, dict(d=0), "d=0", ">= 1"),
    (DataConfig, dict(n_train=0), "n_train=0", ">= 1"),
    (DataConfig, dict(magnitude="gauss"), "magnitude='gauss'", "'pm1'"),
    (DataConfig, dict(margin=-1.0), "margin=-1.0", "[0, inf]"),
    (DataConfig, dict(d=2.5), "d=2.5", "integer"),
    (ModelConfig, dict(m=0), "m=0", ">= 1"),
    (ModelConfig, dict(activation="tanh"), "activation='tanh'", "'relu'"),
    (ModelConfig, dict(bias="learned"), "bias='learned'", "'trained'"),
    (ModelConfig, dict(rho=0.0), "rho=0.0", "(0, inf]"),
    (ModelConfig, dict(beta=float("nan")), "beta=nan", "finite"),
    (TrainConfig, dict(lr=float("inf")), "lr=inf", "finite"),
    (TrainConfig, dict(lr=float("nan")), "lr=nan", "finite"),
    (TrainConfig, dict(lr=0.0), "lr=0.0", "(0, inf]"),
    (TrainConfig, dict(steps=-1), "steps=-1", ">= 0"),
    (TrainConfig, dict(mode="sgd"), "mode='sgd'", "'online'"),
    (TrainConfig, dict(dtype="float16"), "dtype='float16'", "'float32'"),
    (TrainConfig, dict(steps=10, snapshots=(0, 11)), "snapshots[]=11", "<= 10"),
]


@pytest.mark.parametrize("cls,kwargs,named,allowed", BAD)
def test_invalid_config_names_parameter_and_range(cls, kwargs, named, allowed):
    with pytest.raises(ConfigError) as info:
        cls(**kwargs)
    msg = str(info.value)
    assert named in msg and allowed in msg, msg


def test_unknown_field_is_named():
    with pytest.raises(ConfigError, match="'data.dk'"):
        RunConfig.from_dict({"data": {"dk": 3}})


def test_round_trip():
    cfg = RunConfig(DataConfig(d=32, k=2), ModelConfig(bias="trained"), TrainConfig(snapshots=(5, 0)))
    again = RunConfig.from_dict(cfg.to_dict())
    assert again == cfg
    assert again.train.snapshots == (0, 5)
    assert cfg.data.D == 32 and cfg.data.margin == 1.0 and cfg.width() == 64


def test_cli_rejects_bad_config_before_work(tmp_path):
    out = tmp_path / "run"
    res = subprocess.run([sys.executable, "-m", "sim", "train", "--set", "data.k=0", "--out", str(out)],
                         capture_output=True, text=True)
    assert res.returncode == 2
    assert "k=0" in res.stderr and "(0, 256]" in res.stderr
    assert not out.exists()
