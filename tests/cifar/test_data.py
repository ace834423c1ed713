"""Loading CIFAR-10 in both formats, checksums, the decode cache, and clear errors."""

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from cifar import data as cdata
from cifar.data import DataError, load_cifar10
from cifar.testing import write_fake_batches, write_fake_jpeg_npz

REAL = cdata.shared_data_dir() / cdata.JPEG_NAME  # the shared folder beside the checkout, never a machine path


# ----------------------------------------------------------------- cifar-10-batches-py


def test_batches_py_round_trip(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    src = write_fake_batches(folder, per_batch=20, n_test=30)
    ds = load_cifar10(folder)
    assert ds.source == "cifar-10-batches-py"
    assert ds.train_x.shape == (100, 3, 32, 32) and ds.train_x.dtype == np.uint8
    assert ds.test_x.shape == (30, 3, 32, 32)
    assert ds.classes[0] == "airplane" and len(ds.classes) == 10
    # same images and labels, only shuffled: match every loaded image to its source
    for x_l, y_l, x_s, y_s in ((ds.train_x, ds.train_y, src["train_x"], src["train_y"]), (ds.test_x, ds.test_y, src["test_x"], src["test_y"])):
        key = {img.tobytes(): lab for img, lab in zip(x_s, y_s)}
        assert len(x_l) == len(x_s)
        assert all(key[img.tobytes()] == lab for img, lab in zip(x_l, y_l))


def test_batches_py_found_from_parent_and_subset_is_balanced(tmp_path):
    write_fake_batches(tmp_path / "cifar-10-batches-py", per_batch=20, n_test=20)
    ds = load_cifar10(tmp_path, n_train=50, n_test=10, seed=3)
    assert np.bincount(ds.train_y, minlength=10).tolist() == [5] * 10
    assert np.bincount(ds.test_y, minlength=10).tolist() == [1] * 10


def test_batches_py_missing_file_names_path(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_fake_batches(folder)
    (folder / "data_batch_4").unlink()
    with pytest.raises(DataError, match="data_batch_4"):
        load_cifar10(folder)


@pytest.mark.parametrize("content", [b"not a pickle at all", pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]})])
def test_batches_py_corrupt_or_wrong_shape_names_path(tmp_path, content):
    folder = tmp_path / "cifar-10-batches-py"
    write_fake_batches(folder)
    (folder / "test_batch").write_bytes(content)
    with pytest.raises(DataError, match=str(folder / "test_batch")):
        load_cifar10(folder)


def test_batches_py_refuses_arbitrary_pickles(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_fake_batches(folder)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (folder / "data_batch_1").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(DataError, match="refusing"):
        load_cifar10(folder)


# ----------------------------------------------------------------- JPEG archive


def test_jpeg_npz_load_decode_and_cache(tmp_path, monkeypatch):
    npz = tmp_path / "data" / "cifar10-jpeg-q75.npz"
    src = write_fake_jpeg_npz(npz, n_train=100, n_test=20)
    cache = tmp_path / "cache"
    ds = load_cifar10(npz.parent, cache_dir=cache)
    assert ds.source == "jpeg-q75" and ds.verified and ds.caveat and "JPEG" in ds.caveat
    assert ds.train_x.shape == (100, 3, 32, 32) and ds.test_x.shape == (20, 3, 32, 32)
    assert sorted(ds.train_y.tolist()) == sorted(src["train_y"].tolist())
    assert not np.all(np.diff(ds.train_y) >= 0), "class-sorted archive must come out shuffled"
    # decoded pixels are the source pixels up to JPEG error (quality 95, smooth images)
    dec = load_cifar10(npz, cache_dir=cache)  # same seed, same order
    assert np.array_equal(dec.train_x, ds.train_x)
    caches = list(cache.iterdir())
    assert len(caches) == 1 and caches[0].suffix == ".npz", caches  # no temporary files left over
    with np.load(caches[0]) as z:
        cached = z["train_x"].reshape(100, -1).astype(float)
    # each decoded image is closest to its own source image (order kept), up to JPEG noise
    d = ((cached[:, None, :] - src["train_x"].reshape(100, -1)[None].astype(float)) ** 2).mean(-1)
    assert np.array_equal(d.argmin(1), np.arange(100))
    assert np.sqrt(d.diagonal()).mean() < 25
    # the second full load reads the cache and does not decode
    monkeypatch.setattr(cdata, "decode_jpegs", lambda *a, **k: pytest.fail("decoded although cached"))
    again = load_cifar10(npz, cache_dir=cache)
    assert np.array_equal(again.test_x, ds.test_x) and any("from cache" in n for n in again.notes)


def test_jpeg_subset_without_cache_decodes_only_subset(tmp_path):
    npz = tmp_path / "cifar10-jpeg-q75.npz"
    write_fake_jpeg_npz(npz, n_train=100, n_test=20)
    ds = load_cifar10(npz, cache_dir=tmp_path / "cache", n_train=30, n_test=10)
    assert ds.train_x.shape == (30, 3, 32, 32) and np.bincount(ds.train_y).tolist() == [3] * 10
    assert not (tmp_path / "cache").exists()


def test_jpeg_checksum_mismatch_names_path(tmp_path):
    npz = tmp_path / "cifar10-jpeg-q75.npz"
    write_fake_jpeg_npz(npz, n_train=20, n_test=10)
    (tmp_path / "SHA256SUMS").write_text("0" * 64 + "  cifar10-jpeg-q75.npz\n")
    with pytest.raises(DataError, match=f"{npz}.*checksum mismatch"):
        load_cifar10(npz, cache_dir=tmp_path / "c")


def test_jpeg_without_sums_is_loaded_but_unverified(tmp_path):
    npz = tmp_path / "x.npz"
    write_fake_jpeg_npz(npz, n_train=20, n_test=10, sums=False)
    ds = load_cifar10(npz, cache_dir=tmp_path / "c")
    assert not ds.verified and ds.sha256


def test_jpeg_truncated_or_wrong_archive_names_path(tmp_path):
    npz = tmp_path / "cifar10-jpeg-q75.npz"
    write_fake_jpeg_npz(npz, n_train=20, n_test=10, sums=False)
    npz.write_bytes(npz.read_bytes()[:500])
    with pytest.raises(DataError, match=str(npz)):
        load_cifar10(npz, cache_dir=tmp_path / "c")
    np.savez(npz, something=np.zeros(3))
    with pytest.raises(DataError, match="keys"):
        load_cifar10(npz, cache_dir=tmp_path / "c")


def test_broken_jpeg_bytes_name_path(tmp_path):
    npz = tmp_path / "cifar10-jpeg-q75.npz"
    write_fake_jpeg_npz(npz, n_train=20, n_test=10, sums=False)
    with np.load(npz) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["test_jpeg"] = arrays["test_jpeg"].copy()
    arrays["test_jpeg"][: arrays["test_offsets"][1]] = 7  # first test image: garbage
    np.savez(npz, **arrays)
    with pytest.raises(DataError, match=f"{npz}: image 0"):
        load_cifar10(npz, cache_dir=tmp_path / "c")


def test_unreadable_cache_is_rebuilt(tmp_path):
    npz = tmp_path / "cifar10-jpeg-q75.npz"
    write_fake_jpeg_npz(npz, n_train=20, n_test=10)
    cache = tmp_path / "c"
    load_cifar10(npz, cache_dir=cache)
    (f,) = cache.iterdir()
    f.write_bytes(b"junk")
    with pytest.warns(UserWarning, match="unreadable cache"):
        ds = load_cifar10(npz, cache_dir=cache)
    assert ds.train_x.shape == (20, 3, 32, 32)


def test_missing_paths_are_named(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path / "nope")):
        load_cifar10(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="neither"):
        load_cifar10(tmp_path / "empty")
    with pytest.raises(ValueError, match="n_train"):
        write_fake_batches(tmp_path / "b")
        load_cifar10(tmp_path / "b", n_train=10_000)


# ----------------------------------------------------------------- where data is looked for


def test_env_variable_set_to_missing_path_is_an_error_naming_it(tmp_path, monkeypatch):
    monkeypatch.setenv("CIFAR10_DATA", str(tmp_path / "typo"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=f"CIFAR10_DATA={tmp_path / 'typo'}: path does not exist"):
        load_cifar10()
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("CIFAR10_DATA", str(tmp_path / "empty"))
    with pytest.raises(DataError, match="CIFAR10_DATA=.*neither"):
        load_cifar10()


def test_env_variable_used_and_explicit_data_wins(tmp_path, monkeypatch):
    write_fake_batches(tmp_path / "env" / "cifar-10-batches-py", per_batch=20, n_test=20)
    write_fake_batches(tmp_path / "arg", per_batch=10, n_test=10)
    monkeypatch.setenv("CIFAR10_DATA", str(tmp_path / "env"))
    assert load_cifar10().path == str(tmp_path / "env" / "cifar-10-batches-py")
    assert load_cifar10(tmp_path / "arg").path == str(tmp_path / "arg")
    monkeypatch.setenv("CIFAR10_DATA", str(tmp_path / "typo"))
    assert len(load_cifar10(tmp_path / "arg").train_y) == 50  # --data wins; the bad variable is not consulted


def test_fallbacks_are_relative_to_the_checkout(tmp_path, monkeypatch):
    monkeypatch.delenv("CIFAR10_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    root = Path(cdata.__file__).resolve().parent.parent
    cands = [c.resolve() for c in cdata.default_data_candidates()]
    assert cands == [tmp_path / ".data" / "cifar10", root / ".data" / "cifar10", root.parent / "shared" / "data" / "cifar10"]
    write_fake_batches(tmp_path / ".data" / "cifar10", per_batch=10, n_test=10)
    assert load_cifar10().path == ".data/cifar10"


def test_nothing_found_lists_what_was_tried(tmp_path, monkeypatch):
    monkeypatch.delenv("CIFAR10_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cdata, "repo_root", lambda: tmp_path / "repo")
    with pytest.raises(DataError, match="no CIFAR-10 data found .*repo/.data/cifar10.*shared/data/cifar10"):
        load_cifar10()


@pytest.mark.skipif(not REAL.is_file(), reason=f"real CIFAR-10 archive not found at {REAL} (<repo>/../shared/data/cifar10)")
def test_real_archive_checksum_and_subset(tmp_path):
    ds = load_cifar10(REAL, cache_dir=tmp_path, n_train=100, n_test=50)
    assert ds.verified
    assert ds.classes == ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    assert np.bincount(ds.train_y).tolist() == [10] * 10
    mean = ds.train_x.reshape(100, 3, -1).mean(axis=(0, 2)) / 255
    assert np.all(np.abs(mean - np.array([0.49, 0.48, 0.45])) < 0.08)
