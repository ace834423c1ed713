"""Every `python -m sim` subcommand given bad input: exit status 2, one line on stderr naming
the problem, no traceback, nothing written. Run folders never mix; outputs get the umask's mode."""
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from sim import cli

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["--set", "data.d=16", "--set", "data.n_train=300", "--set", "data.n_test=100", "--set", "train.steps=12",
         "--set", "train.snapshot_every=4", "--quiet"]


def _tree(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_size if p.is_file() else None) for p in sorted(root.rglob("*"))}


@pytest.fixture
def place(tmp_path, monkeypatch):
    """A working folder with the inputs the bad commands point at."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "file").write_text("a file, not a folder")
    (tmp_path / "empty").mkdir()
    (tmp_path / "summary.json").write_text(json.dumps({"name": "a sweep summary"}))
    (tmp_path / "spec.toml").write_text((ROOT / "sweeps" / "scaling.toml").read_text())
    return tmp_path


# (argv, a word the message must contain)
BAD = [
    (["train", "--config", "bad.json"], "not valid JSON"),
    (["train", "--config", "missing.json"], "no such file"),
    (["train", "--config", "list.json"], "JSON object"),
    (["train", "--config", "empty"], "folder"),
    (["train", "--out", "file"], "'file'"),
    (["train", "--set", "data.d"], "SECTION.FIELD=VALUE"),
    (["train", "--set", "data.nope=1"], "data.nope"),
    (["train", "--set", "data.d=-3"], "d=-3"),
    (["train", "--resume", "--overwrite"], "--resume"),
    (["train", "--no-such-flag"], "--no-such-flag"),
    (["verify", "--config", "bad.json"], "not valid JSON"),
    (["verify", "--config", "missing.json"], "no such file"),
    (["verify", "--config", "list.json"], "JSON object"),
    (["verify", "--out", "file", "--quick"], "'file'"),
    (["verify", "--set", "tau_l2=-1", "--quick"], "tau_l2"),
    (["verify", "--set", "nope=1", "--quick"], "nope"),
    (["verify", "--json", "empty", "--quick"], "--json"),
    (["verify", "--scaling", "--resume", "--quick"], "--resume"),
    (["plot", "empty"], "results.csv"),
    (["plot", "missing"], "no such file"),
    (["plot", "summary.json"], "summary.json"),
    (["plot", "bad.json"], "bad.json"),
    (["restore", "spec.toml", "missing.csv.gz"], "table 'missing.csv.gz' is invalid"),
    (["restore", "spec.toml", "bad.json"], "allowed a results.csv"),
    (["restore", "missing.toml", "bad.json"], "missing.toml"),
    (["sweep", "spec.toml", "--workers", "-1"], "integers >= 0"),
    (["sweep", "spec.toml", "--threads", "0"], "threads=0"),
    (["sweep", "spec.toml", "--workers", "64", "--threads", "64"], "cores"),
    (["sweep", "spec.toml", "--workers", "x"], "--workers"),
    (["sweep", "spec.toml", "--out", "file"], "'file'"),
    (["sweep", "missing.toml"], "does not exist"),
    (["sweep", "bad.json"], "TOML"),
    (["lowerbound", "--factors", "a"], "--factors"),
    (["lowerbound", "--d", "0"], "d=0"),
    (["lowerbound", "--norm", "l3"], "norm"),
    (["bench", "--threads", "-1"], "--threads"),
    (["bench", "--ops", "train"], "--ops"),
    (["bench", "--impls", "x"], "--impls"),
    (["bench", "--dtypes", "float16"], "--dtypes"),
    (["bench", "--sparse", "x"], "--sparse"),
    (["bench", "--sizes", "1024"], "--sizes"),
    (["bench", "--repeats", "-1"], "--repeats"),
    (["config", "nope"], "nope"),
    (["nope"], "nope"),
]


def _main(argv) -> int:
    try:
        return cli.main(argv)
    except SystemExit as exc:  # argparse's usage errors
        return exc.code


@pytest.mark.parametrize("argv,word", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_line_exit_2_nothing_written(place, capsys, argv, word):
    before = _tree(place)
    assert _main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "error" in lines[0] and word in lines[0], lines[0]
    assert "Traceback" not in err
    assert _tree(place) == before


@pytest.mark.parametrize("argv", [["train", "--config", "bad.json"], ["plot", "summary.json"],
                                  ["train", "--out", "file"], ["sweep", "spec.toml", "--workers", "-1"],
                                  ["bench", "--threads", "-1"]])
def test_bad_input_in_a_real_process(place, argv):
    before = _tree(place)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    res = subprocess.run([sys.executable, "-m", "sim", *argv], cwd=place, env=env, capture_output=True, text=True)
    assert res.returncode == 2
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr, res.stderr
    assert _tree(place) == before


def test_run_folders_never_mix(place, capsys):
    """A second run into a folder holding a run is refused, naming the folder and the flags;
    --resume continues only the same config; --overwrite clears the folder."""
    assert _main(["train", "--out", "r", *SMALL]) == 0
    snaps = sorted(p.name for p in (place / "r" / "snapshots").iterdir())
    capsys.readouterr()
    before = _tree(place)
    assert _main(["train", "--out", "r", *SMALL]) == 2
    err = capsys.readouterr().err
    assert "'r'" in err and "--resume" in err and "--overwrite" in err
    assert _main(["train", "--out", "r", *SMALL, "--set", "data.d=8"]) == 2
    err = capsys.readouterr().err
    assert "another config" in err and "data.d: 8 now, 16 there" in err and "--overwrite" in err
    assert _main(["train", "--out", "r", *SMALL, "--set", "data.d=8", "--resume"]) == 2
    assert _tree(place) == before
    assert _main(["verify", "--out", "r", "--quick"]) == 2
    assert "a sim train run" in capsys.readouterr().err
    assert _tree(place) == before
    # --overwrite: the old run's snapshots are gone, only the new run's are there
    assert _main(["train", "--out", "r", *SMALL, "--set", "data.d=8", "--set", "train.snapshot_every=5",
                  "--overwrite"]) == 0
    assert sorted(p.name for p in (place / "r" / "snapshots").iterdir()) != snaps
    assert json.loads((place / "r" / "config.json").read_text())["data"]["d"] == 8
    # a folder of other files is never cleared
    (place / "mine").mkdir()
    (place / "mine" / "notes.txt").write_text("keep")
    capsys.readouterr()
    assert _main(["train", "--out", "mine", *SMALL, "--overwrite"]) == 2
    assert "not a run" in capsys.readouterr().err
    assert (place / "mine" / "notes.txt").read_text() == "keep"


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_outputs_get_the_umask_mode(tmp_path, mask):
    """Every file and folder of a training run is created with the mode the umask gives."""
    script = (f"import os, sys; os.umask({mask}); from sim.cli import main; "
              f"sys.exit(main(['train', '--out', 'run', *{SMALL!r}]))")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, check=True, capture_output=True)
    paths = [tmp_path / "run", *(tmp_path / "run").rglob("*")]
    assert len(paths) > 8
    for p in paths:
        want = (0o777 if p.is_dir() else 0o666) & ~mask
        assert stat.S_IMODE(p.stat().st_mode) == want, (p, oct(p.stat().st_mode))


@pytest.mark.parametrize("argv", [["config"], ["config", "verify"], ["config", "verify", "--quick"]])
def test_config_prints_defaults_that_build_the_default_config(capsys, argv):
    from sim.experiments.verify import VerifyConfig, quick_config
    from sim.model.config import RunConfig

    assert cli.main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    want = {1: RunConfig(), 2: VerifyConfig(), 3: quick_config()}[len(argv)]
    assert type(want).from_dict(doc) == want
    if len(argv) == 1:  # derived fields stay derived: changing d alone gives a valid config
        doc["data"]["d"] = 32
        assert RunConfig.from_dict(doc).data.D == 32


def test_train_help_lists_the_config_fields(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    out = capsys.readouterr().out
    for field in ("d=256", "k=4.0", "beta=0.1", "steps=300", "snapshot_every=0", "python -m sim config"):
        assert field in out
