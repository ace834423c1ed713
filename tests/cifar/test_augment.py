"""Batch augmentation (crop with padding, flip), run on the CPU with the GPU code path."""

import pytest
import torch
import torch.nn.functional as F

from cifar.augment import augment, random_crop, random_flip, to_float

torch.set_num_threads(1)


def _batch(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)


def test_to_float_range_and_dtype():
    x = _batch()
    f = to_float(x)
    assert f.dtype == torch.float32 and f.min() >= 0 and f.max() <= 1
    assert torch.equal((f * 255).round().to(torch.uint8), x)


@pytest.mark.parametrize("mode", ["zeros", "reflect"])
def test_crop_is_a_shifted_window_of_the_padded_image(mode):
    x = to_float(_batch(32))
    pad = 4
    out = random_crop(x, pad, mode, torch.Generator().manual_seed(1))
    assert out.shape == x.shape
    xp = F.pad(x, (pad,) * 4, mode="constant" if mode == "zeros" else "reflect")
    shifts = set()
    for i in range(len(x)):
        hits = [(dy, dx) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1) if torch.equal(out[i], xp[i, :, dy : dy + 32, dx : dx + 32])]
        assert hits, f"image {i} is not a window of its padded image"
        shifts.add(hits[0])
    assert len(shifts) > 5, "crops should vary across the batch"


def test_flip_mixes_flipped_and_unflipped():
    x = to_float(_batch(200))
    out = random_flip(x, torch.Generator().manual_seed(0))
    same = torch.tensor([torch.equal(o, i) for o, i in zip(out, x)])
    flipped = torch.tensor([torch.equal(o, i.flip(-1)) for o, i in zip(out, x)])
    assert torch.all(same | flipped)
    assert 60 < flipped.sum() < 140


def test_augment_without_pad_or_flip_is_identity_and_seeded():
    x = _batch()
    assert torch.equal(augment(x, pad=0, flip=False), to_float(x))
    a = augment(x, generator=torch.Generator().manual_seed(5))
    b = augment(x, generator=torch.Generator().manual_seed(5))
    c = augment(x, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (64, 3, 32, 32) and a.dtype == torch.float32 and 0 <= a.min() and a.max() <= 1


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="pad_mode"):
        random_crop(to_float(_batch(2)), 2, "wrap")
    with pytest.raises(ValueError, match="pad"):
        augment(_batch(2), pad=-1)
