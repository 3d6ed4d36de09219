"""Index batches: the plain seeded permutation and the sampler that keeps labelled patches in every batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mosaic_edge.data.base import labelled_mask
from mosaic_edge.train.sampling import epoch_batches, labelled_epoch_batches, labelled_per_batch


def test_every_batch_holds_at_least_k_labelled_patches() -> None:
    mask = labelled_mask(2000, 0.01, seed=0)  # 20 labelled patches
    plain = [int(mask[b.numpy()].sum()) for e in range(20) for b in epoch_batches(2000, 128, 0, e)]
    assert np.mean(np.asarray(plain) == 0) > 0.15  # the problem: many batches without a labelled patch
    for k in (2, 8, 16):
        for epoch in range(3):
            batches = labelled_epoch_batches(mask, 128, k, seed=0, epoch=epoch)
            assert len(batches) == 2000 // 128 and all(len(b) == 128 and len(set(b.tolist())) == 128 for b in batches)
            assert all(int(mask[b.numpy()].sum()) == k for b in batches)
            unl = torch.cat([b[~torch.from_numpy(mask[b.numpy()])] for b in batches])
            assert len(unl) == len(set(unl.tolist()))  # each unlabelled patch at most once per epoch
        # labelled patches are drawn evenly: counts differ by at most one over an epoch
        counts = np.bincount(torch.cat(labelled_epoch_batches(mask, 128, k, 0, 0)).numpy(), minlength=2000)[mask]
        assert counts.max() - counts.min() <= 1


def test_sampler_is_seeded_and_falls_back_to_plain_shuffling() -> None:
    mask = labelled_mask(300, 0.05, seed=1)
    a = labelled_epoch_batches(mask, 32, 4, seed=3, epoch=2)
    assert all(torch.equal(x, y) for x, y in zip(a, labelled_epoch_batches(mask, 32, 4, seed=3, epoch=2), strict=True))
    assert not torch.equal(a[0], labelled_epoch_batches(mask, 32, 4, seed=3, epoch=3)[0])
    for m, k in ((np.ones(300, bool), 4), (mask, 0), (np.zeros(300, bool), 4)):
        got, want = labelled_epoch_batches(m, 32, k, 3, 2), epoch_batches(300, 32, 3, 2)
        assert all(torch.equal(x, y) for x, y in zip(got, want, strict=True))


def test_labelled_share_and_caps() -> None:
    assert labelled_per_batch(2000, 20, 128, 16) == 16
    assert labelled_per_batch(2000, 1000, 128, 16) == 64  # the natural share when it is larger
    assert labelled_per_batch(2000, 5, 128, 16) == 5  # no more than exist
    assert labelled_per_batch(100, 20, 16, 16) == 8  # at most half a batch beyond the natural share


def test_ranks_split_the_global_batch_and_its_labelled_patches() -> None:
    mask = labelled_mask(512, 0.02, seed=0)
    whole = labelled_epoch_batches(mask, 64, 8, seed=0, epoch=0)
    parts = [labelled_epoch_batches(mask, 64, 8, seed=0, epoch=0, rank=r, world=2) for r in range(2)]
    for g, (a, b) in zip(whole, zip(*parts, strict=True), strict=True):
        assert sorted(torch.cat([a, b]).tolist()) == sorted(g.tolist())
        assert int(mask[a.numpy()].sum()) == int(mask[b.numpy()].sum()) == 4
    with pytest.raises(ValueError):
        labelled_epoch_batches(mask, 1, 1, 0, 0, world=2)
