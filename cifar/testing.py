"""Helpers for tests: small fake data sets in both on-disk formats, and learnable synthetic
images (each class a smooth colour template plus noise), so that training and attacks can
be checked on the CPU in seconds without the real CIFAR-10."""

from __future__ import annotations

import hashlib
import io
import pickle
from pathlib import Path

import numpy as np

from cifar.data import CLASSES, TEST_BATCH, TRAIN_BATCHES


def synthetic_images(n: int, seed: int = 0, contrast: float = 0.35, noise: float = 0.08) -> tuple[np.ndarray, np.ndarray]:
    """(n, 3, 32, 32) uint8 images and balanced labels: class templates are fixed (seed 1234)
    low-frequency colour patterns; ``seed`` only draws the noise and label order."""
    trng = np.random.default_rng(1234)
    coarse = trng.uniform(-1, 1, size=(10, 3, 4, 4))
    templates = coarse.repeat(8, axis=2).repeat(8, axis=3)  # 4x4 blocks of 8x8 pixels
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(n) % 10)
    x = 0.5 + contrast * templates[y] + noise * rng.standard_normal((n, 3, 32, 32))
    return (np.clip(x, 0, 1) * 255).round().astype(np.uint8), y.astype(np.int64)


def write_fake_batches(folder: Path, per_batch: int = 20, n_test: int = 20, seed: int = 0) -> dict:
    """A tiny cifar-10-batches-py: data_batch_1..5 and test_batch (pickled, as the official
    files) plus batches.meta.  Returns the arrays written (NCHW)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    xs, ys = synthetic_images(5 * per_batch, seed)
    xt, yt = synthetic_images(n_test, seed + 1)
    written = {"train_x": xs, "train_y": ys, "test_x": xt, "test_y": yt}
    for i, name in enumerate(TRAIN_BATCHES):
        sl = slice(i * per_batch, (i + 1) * per_batch)
        _dump(folder / name, xs[sl], ys[sl], name)
    _dump(folder / TEST_BATCH, written["test_x"], written["test_y"], TEST_BATCH)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [c.encode() for c in CLASSES], b"num_vis": 3072}, f, protocol=2)
    return written


def _dump(path: Path, x: np.ndarray, y: np.ndarray, name: str) -> None:
    d = {b"batch_label": name.encode(), b"labels": [int(v) for v in y], b"data": x.reshape(len(x), 3072), b"filenames": [b"f.png"] * len(y)}
    with open(path, "wb") as f:
        pickle.dump(d, f, protocol=2)


def write_fake_jpeg_npz(
    path: Path, n_train: int = 100, n_test: int = 20, seed: int = 0, quality: int = 95, sums: bool = True, contrast: float = 0.35
) -> dict:
    """A tiny archive in the layout of cifar10-jpeg-q75.npz (labels sorted by class, as in
    the real one), with a SHA256SUMS beside it when ``sums``.  Returns the source arrays
    (before JPEG compression) in the archive's order."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays, src = {}, {}
    for split, n, s in (("train", n_train, seed), ("test", n_test, seed + 1)):
        x, y = synthetic_images(n, s, contrast=contrast)
        order = np.argsort(y, kind="stable")
        x, y = x[order], y[order]
        blobs = []
        for img in x:
            buf = io.BytesIO()
            Image.fromarray(img.transpose(1, 2, 0)).save(buf, format="JPEG", quality=quality)
            blobs.append(np.frombuffer(buf.getvalue(), np.uint8))
        arrays[f"{split}_jpeg"] = np.concatenate(blobs)
        arrays[f"{split}_offsets"] = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(np.int64)
        arrays[f"{split}_labels"] = y.astype(np.uint8)
        src[f"{split}_x"], src[f"{split}_y"] = x, y
    arrays["classes"] = np.array(CLASSES)
    np.savez_compressed(path, **arrays)
    if sums:
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        (path.parent / "SHA256SUMS").write_text(f"{sha}  {path.name}\n")
    return src


def trained_tiny_model(n_train: int = 500, epochs: int = 6, seed: int = 0, widths=(8, 16, 16)):
    """A SmallCNN trained (clean) on synthetic images in a second or two on the CPU; returned
    in eval mode inside a runtime.Forward, with float test images and labels."""
    import torch

    from cifar.augment import to_float
    from cifar.models import build_model
    from cifar.runtime import Runtime
    from cifar.train import TrainConfig, train

    torch.manual_seed(seed)
    rt = Runtime.create("cpu")
    model = rt.wrap(build_model("small_cnn", widths=widths))
    x, y = synthetic_images(n_train, seed)
    cfg = TrainConfig(mode="clean", epochs=epochs, batch_size=50, lr=0.05, warmup=0.2, pad=2)
    train(model, torch.from_numpy(x), torch.from_numpy(y), cfg, seed=seed, progress=False)
    xt, yt = synthetic_images(200, seed + 100)
    model.eval()
    return model, to_float(torch.from_numpy(xt)), torch.from_numpy(yt)
