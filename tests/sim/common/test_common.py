"""sim.common: atomic writes (and their file mode), --set overrides, norms, figure sidecars."""
import json
import os
import stat

import numpy as np
import pytest

from sim.common.files import atomic_save_npz, atomic_write_bytes, atomic_write_json, atomic_write_via
from sim.common.norms import NORMS, check_norm
from sim.common.overrides import apply_sets, flatten, parse_assignment, set_path
from sim.common.validation import ConfigError, _check_choice, _check_int, _check_real


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077])
def test_atomic_writes_get_the_umask_mode_not_mkstemps_0600(tmp_path, mask):
    old = os.umask(mask)
    try:
        paths = [tmp_path / "a.bin", tmp_path / "b.json", tmp_path / "c.npz", tmp_path / "d.txt"]
        atomic_write_bytes(paths[0], b"x")
        atomic_write_json(paths[1], {"a": np.float64(1.5)})
        atomic_save_npz(paths[2], a=np.arange(3))
        atomic_write_via(paths[3], lambda tmp: open(tmp, "w").write("y"))
        with open(tmp_path / "plain", "w") as fh:  # what open() gives, for comparison
            fh.write("z")
    finally:
        os.umask(old)
    want = stat.S_IMODE(os.stat(tmp_path / "plain").st_mode)
    assert want == 0o666 & ~mask
    for p in paths:
        assert stat.S_IMODE(os.stat(p).st_mode) == want, p
    assert json.loads(paths[1].read_text()) == {"a": 1.5}
    assert sorted(os.listdir(tmp_path)) == ["a.bin", "b.json", "c.npz", "d.txt", "plain"]  # no temporary left


def test_a_failed_write_leaves_the_old_file(tmp_path):
    p = tmp_path / "f.txt"
    atomic_write_bytes(p, b"old")

    def boom(tmp):
        open(tmp, "w").write("half")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        atomic_write_via(p, boom)
    assert p.read_bytes() == b"old" and os.listdir(tmp_path) == ["f.txt"]


def test_overrides():
    assert parse_assignment("data.d=512") == (["data", "d"], 512)
    assert parse_assignment("a.b=[1, 2]") == (["a", "b"], [1, 2])
    assert parse_assignment("a=relu") == (["a"], "relu")
    with pytest.raises(ConfigError, match="expected SECTION.FIELD=VALUE"):
        parse_assignment("data.d")
    d = {"run": {"data": {"d": 1}}, "tau": 0.1}
    assert apply_sets(d, ["run.data.d=8", "tau=0.5"]) == {"run": {"data": {"d": 8}}, "tau": 0.5}
    with pytest.raises(ConfigError, match="unknown parameter 'run.data.dd'"):
        apply_sets(d, ["run.data.dd=1"])
    with pytest.raises(ConfigError, match="unknown section 'rn'"):
        apply_sets(d, ["rn.data=1"])
    assert flatten(d) == {"run.data.d": 8, "tau": 0.5}
    set_path(d, "run.data.d", 3)
    assert d["run"]["data"]["d"] == 3


def test_one_vocabulary_of_errors():
    assert issubclass(ConfigError, ValueError)
    with pytest.raises(ConfigError, match=r"n=0 is invalid: allowed integers >= 1"):
        _check_int("n", 0, lo=1)
    with pytest.raises(ConfigError, match=r"lr=nan is invalid: allowed a finite real number"):
        _check_real("lr", float("nan"))
    with pytest.raises(ConfigError, match=r"kind='x' is invalid: allowed one of 'a', 'b'"):
        _check_choice("kind", "x", ("a", "b"))
    assert NORMS == ("l2", "linf") and check_norm("linf") == "linf"
    with pytest.raises(ConfigError, match=r"norm='l1' is invalid: allowed 'l2', 'linf'"):
        check_norm("l1")
    from sim.model.config import ConfigError as ModelConfigError

    assert ModelConfigError is ConfigError


def test_figure_and_sidecar(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sim.common.figures import save_figure, sidecar

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    paths = save_figure(fig, tmp_path / "fig.png", formats=("png", "svg"), sidecar=sidecar("python -m sim plot x"))
    assert [p.name for p in paths] == ["fig.png", "fig.svg", "fig.json"]
    side = json.loads(paths[2].read_text())
    assert side["command"] == "python -m sim plot x" and side["files"] == ["fig.png", "fig.svg"]
    assert set(side["commit"]) == {"commit", "dirty"}
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
