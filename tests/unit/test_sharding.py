import pytest
import torch

from denoise_dist.data import Sharding, epoch_permutation, eval_shard
from denoise_dist.errors import DataError


@pytest.mark.parametrize("world, accum", [(1, 1), (2, 1), (4, 2), (8, 1)])
def test_ranks_split_each_global_batch_without_overlap(world, accum):
    n, batch = 1000, 64
    perm = epoch_permutation(n, seed=0, epoch=0)
    shards = [Sharding(n, batch, world, rank, accum) for rank in range(world)]
    for step in range(shards[0].steps_per_epoch):
        global_batch = shards[0].global_batch_indices(perm, step)
        parts = [global_batch[s.rank_slice(m)] for s in shards for m in range(accum)]
        assert torch.equal(torch.cat(parts), global_batch)  # in order, no gaps, no overlap
    seen = torch.cat([shards[0].global_batch_indices(perm, s)
                      for s in range(shards[0].steps_per_epoch)])
    assert len(set(seen.tolist())) == len(seen) == n - shards[0].dropped_per_epoch


def test_dropped_images_are_counted():
    s = Sharding(55000, 128)
    assert s.steps_per_epoch == 429 and s.dropped_per_epoch == 88


def test_epoch_permutations_are_seeded_and_differ_by_epoch():
    a = epoch_permutation(100, seed=3, epoch=0)
    assert torch.equal(a, epoch_permutation(100, seed=3, epoch=0))
    assert not torch.equal(a, epoch_permutation(100, seed=3, epoch=1))
    assert sorted(a.tolist()) == list(range(100))


def test_batch_must_divide_by_world_and_accumulation():
    with pytest.raises(DataError, match="must divide by processes x grad_accum"):
        Sharding(1000, 30, world_size=4)
    with pytest.raises(DataError, match="exceeds"):
        Sharding(10, 32)


@pytest.mark.parametrize("n, world", [(10, 3), (5000, 2), (7, 8), (1, 1)])
def test_eval_shards_cover_every_image_once(n, world):
    covered = [i for rank in range(world) for i in range(n)[eval_shard(n, world, rank)]]
    assert covered == list(range(n))
