"""``python -m cifar`` as a user runs it: every bad input is one line on stderr naming the
problem, exit status 2, no traceback, and nothing written (no output folder, no cache)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import cifar
from cifar.testing import write_fake_jpeg_npz

ROOT = Path(cifar.__file__).resolve().parent.parent


def cli(args, cwd, env_extra=None, timeout=120):
    env = {k: v for k, v in os.environ.items() if k not in ("CIFAR10_DATA", "FP_CACHE")}
    # caches pointed into cwd, so that writing one counts as writing something; matplotlib's own aside
    env.update(PYTHONPATH=str(ROOT), XDG_CACHE_HOME=str(cwd / "xdg-cache"), HOME=str(cwd / "home"),
               MPLCONFIGDIR=str(cwd.parent / f"{cwd.name}-mpl"))
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "cifar", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def snapshot(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.fixture
def workdir(tmp_path):
    (tmp_path / "a_file.txt").write_text("not data\n")
    (tmp_path / "empty").mkdir()
    return tmp_path


RUN = ["run", "--preset", "smoke", "--out", "out"]
BAD = {
    "no command": ([], "the following arguments are required"),
    "run without preset/out": (["run"], "--preset, --out"),
    "unknown preset": (["run", "--preset", "nope", "--out", "out"], "invalid choice: 'nope'"),
    "unknown option": (RUN + ["--bogus"], "unrecognized arguments: --bogus"),
    "eps not a number": (RUN + ["--eps", "eight"], "eps must be a number"),
    "eps division by zero": (RUN + ["--eps", "1/0"], "eps must be a number"),
    "eps out of range": (RUN + ["--eps", "2"], "eps for norm 'linf' must be a number in (0, 1]"),
    "l2 eps out of range": (RUN + ["--norm", "l2", "--eps", "100"], "eps for norm 'l2'"),
    "unknown norm": (RUN + ["--norm", "l3"], "invalid choice: 'l3'"),
    "ranks not integers": (RUN + ["--ranks", "1,x"], "ranks must be comma-separated positive integers"),
    "rank zero": (RUN + ["--ranks", "0"], "ranks must be comma-separated positive integers"),
    "negative seed": (RUN + ["--seed", "-1"], "seed must be an integer in 0.."),
    "seed not an integer": (RUN + ["--seed", "x"], "seed must be an integer"),
    "zero threads": (RUN + ["--threads", "0"], "threads must be an integer >= 1"),
    "unknown device": (RUN + ["--device", "tpu"], "device must be one of"),
    "unknown adv mode": (RUN + ["--adv-mode", "trades"], "invalid choice: 'trades'"),
    "missing data": (RUN + ["--data", "no-such-data"], "--data no-such-data: data path does not exist"),
    "empty data folder": (RUN + ["--data", "empty"], "--data empty: folder holds neither"),
    "data is not an archive": (RUN + ["--data", "a_file.txt"], "--data a_file.txt: expected a JPEG archive"),
    "out is a file": (["run", "--preset", "smoke", "--out", "a_file.txt"], "out='a_file.txt': 'a_file.txt' exists and is not a folder"),
    "out below a file": (["run", "--preset", "smoke", "--out", "a_file.txt/sub"], "'a_file.txt' exists and is not a folder"),
    "cache is a file": (RUN + ["--cache", "a_file.txt"], "cache='a_file.txt' exists and is not a folder"),
    "prepare, missing data": (["prepare", "--data", "no-such-data"], "--data no-such-data: data path does not exist"),
}


@pytest.fixture(scope="module")
def fake_data(tmp_path_factory):
    """A tiny archive outside the working folder: the cases that are not about the data must not
    depend on finding the real CIFAR-10 (a clone without the shared folder has none)."""
    npz = tmp_path_factory.mktemp("fake-data") / "cifar10-jpeg-q75.npz"
    write_fake_jpeg_npz(npz, n_train=20, n_test=10)
    return npz


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_exit_2_nothing_written(workdir, fake_data, case):
    args, expected = BAD[case]
    before = snapshot(workdir)
    r = cli(args, workdir, None if "--data" in args else {"CIFAR10_DATA": str(fake_data)})
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith("python -m cifar") and ": error: " in lines[0]
    assert expected in lines[0], lines[0]
    assert r.stdout == ""
    assert snapshot(workdir) == before  # no output folder, no cache, nothing half-written


def test_env_variable_set_to_a_missing_path(workdir):
    before = snapshot(workdir)
    r = cli(RUN, workdir, {"CIFAR10_DATA": str(workdir / "typo")})
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert f"CIFAR10_DATA={workdir / 'typo'}: path does not exist" in r.stderr
    assert snapshot(workdir) == before


def test_corrupt_archive_leaves_no_output_folder(workdir):
    npz = workdir / "data" / "cifar10-jpeg-q75.npz"
    write_fake_jpeg_npz(npz, n_train=20, n_test=10)
    (npz.parent / "SHA256SUMS").write_text("0" * 64 + "  cifar10-jpeg-q75.npz\n")
    before = snapshot(workdir)
    r = cli(RUN + ["--data", str(npz), "--quiet"], workdir)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert "checksum mismatch" in r.stderr and str(npz) in r.stderr
    assert snapshot(workdir) == before


@pytest.mark.parametrize("args", [["run", "--preset", "gpu", "--out", "out"], RUN + ["--device", "cuda"]], ids=["gpu preset", "cuda device"])
def test_gpu_asked_for_without_one(workdir, args):
    import torch

    if torch.cuda.is_available():
        pytest.skip("checks the refusal on a machine without CUDA")
    npz = workdir / "data" / "cifar10-jpeg-q75.npz"
    write_fake_jpeg_npz(npz, n_train=20, n_test=10)
    before = snapshot(workdir)
    r = cli(args + ["--data", str(npz)], workdir)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert "CUDA" in r.stderr
    assert snapshot(workdir) == before


def test_help_is_fast_and_consistent(workdir):
    code = "import sys, cifar.cli; sys.exit('torch' in sys.modules)"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 0, "importing the CLI imported torch"
    code = "import sys, cifar.measures, cifar.pipeline; sys.exit('numba' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 0, "cifar's pipeline imported Numba"
    for args in ([], ["run"], ["prepare"], ["presets"]):
        r = cli(args + ["--help"], workdir)
        assert r.returncode == 0 and r.stderr == ""
        assert r.stdout.startswith(f"usage: python -m cifar {args[0] if args else ''}".rstrip())
    run_help = cli(["run", "--help"], workdir).stdout
    prep_help = cli(["prepare", "--help"], workdir).stdout
    for option in ("--data", "--cache", "--seed"):
        text = run_help.split(option, 1)[1].split("\n  -", 1)[0]
        assert len(text.split()) > 3, f"run {option} has no help"
    for option in ("--data", "--cache"):
        assert len(prep_help.split(option, 1)[1].split("\n  -", 1)[0].split()) > 3, f"prepare {option} has no help"
    assert "CIFAR10_DATA" in run_help and "shared/data/cifar10" in run_help


def test_presets_lists_every_preset(workdir):
    from cifar.presets import PRESETS

    r = cli(["presets"], workdir)
    assert r.returncode == 0
    assert [line.split()[0] for line in r.stdout.splitlines()] == sorted(PRESETS)
