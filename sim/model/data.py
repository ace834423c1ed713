"""The sparse-coding data model of SPEC section 1: x = M z + xi, y = sgn(<w*, z>).

Everything is a pure function of a DataConfig: the root SeedSequence(seed) is
spawned into fixed child streams (dictionary, w*, train, test, init, online), so the
same config always gives the same numbers, and a run directory only has to store the
config to regenerate its data exactly.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import DataConfig
from .linalg import matmul

# Child indices of the root SeedSequence; fixed forever so that old runs regenerate.
STREAM_DICTIONARY, STREAM_WSTAR, STREAM_TRAIN, STREAM_TEST, STREAM_INIT, STREAM_ONLINE, STREAM_ATTACK = range(7)


def stream(cfg: DataConfig, which: int, *extra: int) -> np.random.Generator:
    """A Generator for child stream `which` (and optional sub-keys) of the config's seed."""
    return np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(which, *extra)))


def matvec(A: np.ndarray, v: np.ndarray) -> np.ndarray:
    """A @ v with the same bits for any thread count (sim.model.linalg.matmul): a
    multi-threaded BLAS rounds A @ B differently with 1 and 2 threads (x = z M^T did:
    the FGM and PGD results then differed by thread count)."""
    return matmul(A, np.asarray(v)[:, None])[:, 0]


def make_dictionary(cfg: DataConfig) -> np.ndarray:
    """The d x D dictionary M with unit-norm columns (atoms).

    orthogonal: Haar-random orthogonal (QR of a Gaussian with the sign fix of
    Mezzadri 2007); identity: the pixel basis; overcomplete: i.i.d. Gaussian columns
    normalised to unit norm (incoherent with high probability).
    """
    rng = stream(cfg, STREAM_DICTIONARY)
    if cfg.dictionary == "identity":
        return np.eye(cfg.d)
    if cfg.dictionary == "orthogonal":
        g = rng.standard_normal((cfg.d, cfg.d))
        q, r = np.linalg.qr(g)
        return q * np.sign(np.diag(r))[None, :]
    a = rng.standard_normal((cfg.d, cfg.D))
    return a / np.linalg.norm(a, axis=0, keepdims=True)


def make_wstar(cfg: DataConfig) -> np.ndarray:
    """Label weights w* uniform in {-1, +1}^D."""
    rng = stream(cfg, STREAM_WSTAR)
    return rng.choice(np.array([-1.0, 1.0]), size=cfg.D)


@dataclass(frozen=True)
class Dataset:
    """Samples of the model: inputs x (n x d), labels y in {-1,+1}, hidden codes z (n x D)."""

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    acceptance_rate: float

    def __len__(self):
        return len(self.y)

    def astype(self, dtype) -> "Dataset":
        return Dataset(np.ascontiguousarray(self.x, dtype=dtype), self.y.astype(dtype), self.z,
                       self.acceptance_rate)


@dataclass(frozen=True)
class Problem:
    """One instance of the data model: the dictionary, w*, and the config."""

    cfg: DataConfig
    M: np.ndarray
    wstar: np.ndarray

    @classmethod
    def from_config(cls, cfg: DataConfig) -> "Problem":
        return cls(cfg, make_dictionary(cfg), make_wstar(cfg))

    @property
    def bayes_direction(self) -> np.ndarray:
        """M w*, the direction of the dense attack and of the best linear classifier."""
        return matvec(self.M, self.wstar)

    def sample_codes(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, float]:
        """n codes z with |<w*, z>| >= margin, by rejection; returns (z, acceptance rate).

        The active atoms: each independently with probability k/D (sparsity='bernoulli')
        or exactly round(k) of them, uniform without replacement (sparsity='exact').

        Draws proceed in blocks whose size depends only on n and the running
        acceptance estimate, so the result is a pure function of (config, rng state).
        """
        cfg = self.cfg
        p = cfg.k / cfg.D
        kept, drawn, n_kept = [], 0, 0
        rate = 1.0
        while n_kept < n:
            block = int(min(max(2 * (n - n_kept) / max(rate, 1e-3), 64), 10_000_000 // cfg.D + 1))
            if cfg.sparsity == "exact":
                # round(k) atoms per sample, uniform without replacement: the round(k)
                # smallest of D i.i.d. uniforms index a uniformly random subset
                u = rng.random((block, cfg.D))
                idx = np.argpartition(u, cfg.n_active() - 1, axis=1)[:, :cfg.n_active()]
                active = np.zeros((block, cfg.D), dtype=bool)
                np.put_along_axis(active, idx, True, axis=1)
            else:
                active = rng.random((block, cfg.D)) < p
            signs = np.where(rng.random((block, cfg.D)) < 0.5, -1.0, 1.0)
            if cfg.magnitude == "pm1":
                mag = np.ones((block, cfg.D))
            else:
                mag = rng.uniform(cfg.a_min, 1.0, size=(block, cfg.D))
            z = active * signs * mag
            score = matvec(z, self.wstar)
            ok = np.abs(score) >= cfg.margin
            if cfg.margin == 0:
                ok &= score != 0  # a zero score has no label
            drawn += block
            kept.append(z[ok])
            n_kept += int(ok.sum())
            rate = n_kept / drawn
            if drawn > 1000 * n + 10_000 and n_kept == 0:
                raise RuntimeError(
                    f"margin={cfg.margin} rejects every sample (k={cfg.k}, D={cfg.D}); lower margin or raise k")
        z = np.concatenate(kept)[:n]
        return z, n_kept / drawn

    def sample(self, n: int, rng: np.random.Generator) -> Dataset:
        """n labelled samples x = M z + xi, y = sgn<w*, z>, from the given stream."""
        z, rate = self.sample_codes(n, rng)
        x = matmul(z, self.M.T)  # not z @ M.T: multi-threaded BLAS rounds differently per thread count
        if self.cfg.noise > 0:
            x = x + rng.standard_normal(x.shape) * (self.cfg.noise / np.sqrt(self.cfg.d))
        y = np.sign(matvec(z, self.wstar))
        return Dataset(np.ascontiguousarray(x), y, z, rate)

    def train_set(self) -> Dataset:
        return self.sample(self.cfg.n_train, stream(self.cfg, STREAM_TRAIN))

    def test_set(self) -> Dataset:
        return self.sample(self.cfg.n_test, stream(self.cfg, STREAM_TEST))

    def online_batch(self, step: int, n: int) -> Dataset:
        """The fresh batch of online step `step` (its own stream, so steps are independent)."""
        return self.sample(n, stream(self.cfg, STREAM_ONLINE, step))


MARGIN_CLASSES = ("1", "2", ">=3")
MARGIN_TAGS = ("m1", "m2", "m3+")  # the same classes as metric suffixes of the sweep rows (robust_acc:m1 ...)


def margin_classes(z: np.ndarray, wstar: np.ndarray) -> np.ndarray:
    """The margin class of each code: index into MARGIN_CLASSES of |<w*, z>| rounded to the
    nearest integer (values below 1.5 in class "1", in [1.5, 2.5) in "2", the rest ">=3").
    With pm1 codes |<w*, z>| is an integer and the classes are exact; a margin-1 point with
    a active atoms is the one an ideal purified network holds least far (up to about
    (1 - beta) / sqrt(a) in l2, sim.model.network.ideal_network)."""
    s = np.abs(np.asarray(z, np.float64) @ np.asarray(wstar, np.float64))
    return np.where(s < 1.5, 0, np.where(s < 2.5, 1, 2)).astype(np.int64)
