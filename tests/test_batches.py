"""In-RAM batches augmented a batch at a time (issue 14's per-step overhead): the same batches as the
DataLoader would cut, flips that only mirror, and one seed -> one stream (resume stays bit-identical)."""

import numpy as np
import torch

from kagglecv.ml.augment import Augment
from kagglecv.ml.batches import MemoryBatches
from kagglecv.ml.data import ImageDataset, make_loader


def _images(n=70, size=8):
    return np.random.default_rng(0).integers(0, 255, (n, size, size, 3), dtype=np.uint8)


def test_batches_cut_like_the_dataloader():
    images, labels = _images(), np.arange(70) % 3
    for shuffle in (True, False):
        ours = MemoryBatches(images, labels, batch_size=32, shuffle=shuffle)
        theirs = make_loader(
            ImageDataset([""] * 70, labels, 8, images), batch_size=32, shuffle=shuffle, workers=0
        )
        assert len(ours) == len(theirs) == len(list(ours))  # 2 (drop_last) while training, 3 to validate
    x, y = next(iter(MemoryBatches(images, labels, batch_size=70, shuffle=False)))
    assert torch.equal(x, torch.from_numpy(images).permute(0, 3, 1, 2).float()) and torch.equal(
        y, torch.as_tensor(labels)
    )


def test_a_flip_only_mirrors_and_both_ways_occur():
    x = torch.rand(16, 3, 8, 8) * 255
    y = Augment(hflip=True).per_batch(seed=1)(x)
    same = [torch.allclose(y[i], x[i], atol=1e-3) for i in range(16)]
    mirrored = [torch.allclose(y[i], x[i].flip(2), atol=1e-3) for i in range(16)]
    assert all(a != b for a, b in zip(same, mirrored, strict=True)) and any(same) and any(mirrored)


def test_one_seed_one_stream():
    images, labels = _images(), np.arange(70) % 3

    def epoch(seed):
        dl = MemoryBatches(
            images, labels, batch_size=16, shuffle=True, augment=Augment(10, 0.1, 0.1, True).per_batch()
        )
        dl.generator.manual_seed(seed)  # what fold.run_epoch does every epoch
        dl.dataset.transform.set_random_seed(seed)
        return [x for x, _ in dl]

    a, b, c = epoch(5), epoch(5), epoch(6)
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    assert not torch.equal(a[0], c[0])
    assert not torch.equal(a[0].round(), a[0])  # interpolated: the jitter really moved pixels
