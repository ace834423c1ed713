"""CIFAR-10 loading: the project's JPEG archive (checksummed, decoded once, cached) or the
official ``cifar-10-batches-py`` release.

Both give uint8 images in NCHW order, (n, 3, 32, 32), and int64 labels, shuffled with a
fixed seed (the JPEG archive is sorted by class) so that any prefix is class-balanced.
Every failure raises :class:`DataError` naming the offending path.

Where the data is looked for, in order (:func:`resolve_data_path`): ``--data PATH``;
$CIFAR10_DATA (when set it must exist, no fallback); ./.data/cifar10 in the current folder;
<repo>/.data/cifar10; <repo>/../shared/data/cifar10 (the shared folder beside the checkout).
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sim.common.files import atomic_save_npz
from sim.common.validation import ConfigError  # bad parameters: one error type with sim

JPEG_NAME = "cifar10-jpeg-q75.npz"
BATCHES_NAME = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
JPEG_CAVEAT = (
    "Images come from a JPEG (quality 75) copy of CIFAR-10: pixel values differ from the official "
    "binary release by a few levels out of 255 and the image order is not the official one, so "
    "accuracies are close to, but not exactly comparable with, published CIFAR-10 numbers."
)
_JPEG_KEYS = ("train_jpeg", "test_jpeg", "train_offsets", "test_offsets", "train_labels", "test_labels", "classes")


class DataError(RuntimeError):
    """Missing, corrupt or inconsistent data; the message names the path."""


@dataclass
class Cifar10:
    """Images (n, 3, 32, 32) uint8 and labels (n,) int64 for both splits, plus provenance."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: tuple[str, ...]
    source: str
    path: str
    sha256: str | None = None
    verified: bool = False
    caveat: str | None = None
    notes: list[str] = field(default_factory=list)

    def describe(self) -> dict:
        return {
            "source": self.source,
            "path": self.path,
            "sha256": self.sha256,
            "checksum_verified": self.verified,
            "n_train": int(len(self.train_y)),
            "n_test": int(len(self.test_y)),
            "classes": list(self.classes),
            "caveat": self.caveat,
            "notes": list(self.notes),
        }


# --------------------------------------------------------------------------- paths, files


DATA_ENV = "CIFAR10_DATA"


def repo_root() -> Path:
    """The checkout holding the ``cifar`` package (the folder above cifar/)."""
    return Path(__file__).resolve().parent.parent


def shared_data_dir() -> Path:
    """The project's shared data folder, which sits beside the checkout: <repo>/../shared/data/cifar10."""
    return repo_root().parent / "shared" / "data" / "cifar10"


def default_data_candidates() -> list[Path]:
    """The fallbacks, in order, used when neither ``--data`` nor $CIFAR10_DATA is given:
    ./.data/cifar10 (current folder), <repo>/.data/cifar10, <repo>/../shared/data/cifar10."""
    out: list[Path] = []
    for cand in (Path(".data/cifar10"), repo_root() / ".data" / "cifar10", shared_data_dir()):
        if all(cand.resolve() != c.resolve() for c in out):
            out.append(cand)
    return out


def env_data_path() -> Path | None:
    """$CIFAR10_DATA as a path (None when unset or empty); an explicit setting that does not
    exist is a DataError naming the variable, never silently replaced by a fallback."""
    value = os.environ.get(DATA_ENV)
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.exists():
        raise DataError(f"{DATA_ENV}={value}: path does not exist (point it at {JPEG_NAME}, its folder or a {BATCHES_NAME} folder, or unset it)")
    return path


def default_cache_dir() -> Path:
    """$FP_CACHE, else $XDG_CACHE_HOME/feature-purification, else ~/.cache/feature-purification."""
    if os.environ.get("FP_CACHE"):
        return Path(os.environ["FP_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "feature-purification"


def resolve_data_path(data: str | os.PathLike | None) -> tuple[str, Path]:
    """Return (format, path) with format 'jpeg' (an .npz file) or 'batches' (a batches-py folder).

    ``data`` (or a set $CIFAR10_DATA) must hold the data; the fallbacks of
    :func:`default_data_candidates` are skipped when absent."""
    if data is not None:
        explicit: list[tuple[Path, str]] = [(Path(data).expanduser(), "")]
    else:
        env = env_data_path()
        explicit = [(env, f"{DATA_ENV}=")] if env is not None else []
    candidates = explicit or [(c, "") for c in default_data_candidates()]
    for cand, label in candidates:
        cand = cand.expanduser()
        if cand.is_file():
            if cand.suffix == ".npz":
                return "jpeg", cand
            raise DataError(f"{label}{cand}: expected a JPEG archive '*.npz' or a '{BATCHES_NAME}' folder")
        if cand.is_dir():
            for sub in (cand, cand / BATCHES_NAME):
                if (sub / TEST_BATCH).exists() or (sub / TRAIN_BATCHES[0]).exists():
                    return "batches", sub
            if (cand / JPEG_NAME).is_file():
                return "jpeg", cand / JPEG_NAME
            if explicit:
                raise DataError(
                    f"{label}{cand}: folder holds neither {JPEG_NAME} nor the {BATCHES_NAME} files "
                    f"({', '.join(TRAIN_BATCHES)}, {TEST_BATCH})"
                )
        elif explicit:
            raise DataError(f"{label}{cand}: data path does not exist")
    tried = ", ".join(str(c) for c, _ in candidates)
    raise DataError(f"no CIFAR-10 data found (tried {tried}); pass --data PATH to {JPEG_NAME} or {BATCHES_NAME}, or set {DATA_ENV}")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_checksum(path: Path) -> tuple[str, bool]:
    """Hash ``path`` and compare with a SHA256SUMS file beside it (if there is one listing it).

    Returns (sha256, verified). A listed but mismatching hash raises DataError.
    """
    sha = sha256_file(path)
    sums = path.parent / "SHA256SUMS"
    if not sums.is_file():
        return sha, False
    for line in sums.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[-1].lstrip("*") == path.name:
            if parts[0].lower() != sha:
                raise DataError(f"{path}: checksum mismatch (SHA256SUMS says {parts[0]}, file has {sha}); the file is corrupt or altered")
            return sha, True
    return sha, False


# --------------------------------------------------------------------------- subsets


def balanced_subset(labels: np.ndarray, n: int | None, seed: int, name: str) -> np.ndarray:
    """Indices of a random class-balanced subset of size n (all indices, shuffled, when n is None)."""
    rng = np.random.default_rng(seed)
    total = len(labels)
    if n is None or n == total:
        return rng.permutation(total)
    if not 0 < n <= total:
        raise ConfigError(f"{name} must be in 1..{total}, got {n}")
    classes = np.unique(labels)
    per = np.full(len(classes), n // len(classes))
    per[: n % len(classes)] += 1
    picks = []
    for c, k in zip(classes, per):
        idx = np.flatnonzero(labels == c)
        if k > len(idx):
            raise ConfigError(f"{name}={n} needs {k} images of class {c}, only {len(idx)} available")
        picks.append(rng.choice(idx, size=k, replace=False))
    return rng.permutation(np.concatenate(picks))


# --------------------------------------------------------------------------- JPEG archive


def decode_jpegs(blob: np.ndarray, offsets: np.ndarray, idx: np.ndarray, path: Path) -> np.ndarray:
    """Decode the images ``idx`` of a concatenated JPEG blob into (k, 3, 32, 32) uint8."""
    from PIL import Image

    out = np.empty((len(idx), 3, 32, 32), np.uint8)
    for j, i in enumerate(idx):
        raw = blob[offsets[i] : offsets[i + 1]].tobytes()
        try:
            img = np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"))
        except Exception as e:  # PIL raises several types for broken files
            raise DataError(f"{path}: image {i} does not decode as JPEG ({e})") from e
        if img.shape != (32, 32, 3):
            raise DataError(f"{path}: image {i} decodes to shape {img.shape}, expected (32, 32, 3)")
        out[j] = img.transpose(2, 0, 1)
    return out


def _read_jpeg_archive(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in _JPEG_KEYS if k not in z.files]
            if missing:
                raise DataError(f"{path}: not a CIFAR-10 JPEG archive, keys {missing} missing")
            arrays = {k: z[k] for k in _JPEG_KEYS}
    except DataError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"{path}: cannot read the archive ({e})") from e
    for split in ("train", "test"):
        off, lab, blob = arrays[f"{split}_offsets"], arrays[f"{split}_labels"], arrays[f"{split}_jpeg"]
        if off.ndim != 1 or len(off) != len(lab) + 1 or off[0] != 0 or off[-1] != len(blob) or np.any(np.diff(off) <= 0):
            raise DataError(f"{path}: {split}_offsets are inconsistent with {split}_jpeg/{split}_labels")
        if lab.size and lab.max() >= 10:
            raise DataError(f"{path}: {split}_labels outside 0..9")
    return arrays


def load_jpeg_npz(
    path: Path,
    cache_dir: Path | None = None,
    n_train: int | None = None,
    n_test: int | None = None,
    seed: int = 0,
    verify: bool = True,
) -> Cifar10:
    """Load the JPEG archive. Full loads are decoded once and cached (keyed by the archive's
    SHA-256); subsets are decoded on their own unless the cache already exists."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: JPEG archive does not exist")
    sha, verified = verify_checksum(path) if verify else (sha256_file(path), False)
    arrays = _read_jpeg_archive(path)
    classes = tuple(str(c) for c in arrays["classes"])
    ys = {s: arrays[f"{s}_labels"].astype(np.int64) for s in ("train", "test")}
    picks = {
        "train": balanced_subset(ys["train"], n_train, seed, "n_train"),
        "test": balanced_subset(ys["test"], n_test, seed + 1, "n_test"),
    }
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache = cache_dir / f"{path.stem}-{sha[:16]}.decoded.npz"
    notes = []
    full = None
    if cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as z:
                full = {k: z[k] for k in ("train_x", "test_x")}
            if full["train_x"].shape != (len(ys["train"]), 3, 32, 32) or full["test_x"].shape != (len(ys["test"]), 3, 32, 32):
                raise ValueError("shapes do not match the archive")
            notes.append(f"decoded images read from cache {cache}")
        except Exception as e:  # a broken cache is ours to rebuild, not the user's problem
            warnings.warn(f"{cache}: ignoring unreadable cache ({e}); decoding again")
            full = None
    subset = n_train is not None or n_test is not None
    if full is None and not subset:
        full = {
            f"{s}_x": decode_jpegs(arrays[f"{s}_jpeg"], arrays[f"{s}_offsets"], np.arange(len(ys[s])), path)
            for s in ("train", "test")
        }
        try:
            atomic_save_npz(cache, **full)
            notes.append(f"decoded images cached at {cache}")
        except OSError as e:
            warnings.warn(f"{cache}: could not write the decode cache ({e})")
    out = {}
    for s in ("train", "test"):
        idx = picks[s]
        out[s] = full[f"{s}_x"][idx] if full is not None else decode_jpegs(arrays[f"{s}_jpeg"], arrays[f"{s}_offsets"], idx, path)
    return Cifar10(
        out["train"], ys["train"][picks["train"]], out["test"], ys["test"][picks["test"]],
        classes, "jpeg-q75", str(path), sha, verified, JPEG_CAVEAT, notes,
    )


# --------------------------------------------------------------------------- official batches


class _SafeUnpickler(pickle.Unpickler):
    """Unpickler limited to what CIFAR batch files contain (numpy arrays, bytes, lists, dicts)."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return super().find_class(module, name)


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise DataError(f"{path}: batch file is missing")
    try:
        with open(path, "rb") as f:
            d = _SafeUnpickler(f, encoding="bytes").load()
    except Exception as e:
        raise DataError(f"{path}: not a readable CIFAR-10 batch ({type(e).__name__}: {e})") from e
    if not isinstance(d, dict):
        raise DataError(f"{path}: expected a pickled dict, found {type(d).__name__}")
    d = {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}
    if "data" not in d or "labels" not in d:
        raise DataError(f"{path}: keys b'data' and b'labels' are required, found {sorted(d)}")
    data = np.asarray(d["data"])
    labels = np.asarray(d["labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{path}: b'data' must be uint8 (n, 3072), found {data.dtype} {data.shape}")
    if labels.shape != (data.shape[0],) or (labels.size and (labels.min() < 0 or labels.max() > 9)):
        raise DataError(f"{path}: b'labels' must hold {data.shape[0]} labels in 0..9")
    return data.reshape(-1, 3, 32, 32), labels


def load_batches_py(folder: Path, n_train: int | None = None, n_test: int | None = None, seed: int = 0) -> Cifar10:
    """Load the official pickled release (data_batch_1..5, test_batch; batches.meta optional)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: {BATCHES_NAME} folder does not exist")
    parts = [_read_batch(folder / name) for name in TRAIN_BATCHES]
    train_x = np.concatenate([p[0] for p in parts])
    train_y = np.concatenate([p[1] for p in parts])
    test_x, test_y = _read_batch(folder / TEST_BATCH)
    classes = CLASSES
    meta = folder / "batches.meta"
    if meta.is_file():
        try:
            with open(meta, "rb") as f:
                m = _SafeUnpickler(f, encoding="bytes").load()
            names = m.get(b"label_names") or m.get("label_names")
            if names and len(names) == 10:
                classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
        except Exception as e:
            raise DataError(f"{meta}: unreadable batches.meta ({e})") from e
    tr = balanced_subset(train_y, n_train, seed, "n_train")
    te = balanced_subset(test_y, n_test, seed + 1, "n_test")
    return Cifar10(train_x[tr], train_y[tr], test_x[te], test_y[te], classes, BATCHES_NAME, str(folder), None, False, None)


def load_cifar10(
    data: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    n_train: int | None = None,
    n_test: int | None = None,
    seed: int = 0,
) -> Cifar10:
    """Load CIFAR-10 from ``data`` (JPEG .npz, its folder, or a batches-py folder; see
    :func:`default_data_candidates` when None), optionally a balanced random subset."""
    fmt, path = resolve_data_path(data)
    if fmt == "batches":
        return load_batches_py(path, n_train, n_test, seed)
    return load_jpeg_npz(path, Path(cache_dir) if cache_dir else None, n_train, n_test, seed)
