import pytest
import torch

from denoise_dist.data import CropTrainSet, Sharding, TensorTrainSet, epoch_permutation, eval_shard
from denoise_dist.errors import DataError


@pytest.mark.parametrize("world, accum", [(1, 1), (2, 1), (4, 2), (8, 1)])
def test_ranks_split_each_global_batch_without_overlap(world, accum):
    n, batch = 1000, 64
    images = torch.arange(n).view(n, 1, 1)  # each image holds its own index
    train_set = TensorTrainSet(images, seed=0)
    shards = [Sharding(n, batch, world, rank, accum) for rank in range(world)]
    seen = []
    for step in range(shards[0].steps_per_epoch + 2):  # into the second epoch
        whole = train_set.batch(step, torch.arange(batch), shards[0]).flatten()
        parts = [
            train_set.batch(step, s.rows(m, "cpu"), s).flatten()
            for s in shards
            for m in range(accum)
        ]
        assert torch.equal(torch.cat(parts), whole)  # in order, no gaps, no overlap
        if step < shards[0].steps_per_epoch:
            seen += (whole * 255).round().long().tolist()
    assert len(set(seen)) == len(seen) == n - shards[0].dropped_per_epoch


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


def pictures():
    gen = torch.Generator().manual_seed(0)
    return [
        torch.randint(0, 256, size, generator=gen, dtype=torch.uint8)
        for size in [(40, 70), (16, 16), (33, 20)]
    ]


def test_crops_are_exact_windows_of_the_pictures():
    pics = pictures()
    crops = CropTrainSet(pics, patch=16, seed=1, device="cpu")
    batch = (crops.batch(5, torch.arange(256), Sharding(crops.num_examples, 8)) * 255).round()
    for crop in batch[:, 0].to(torch.uint8):
        found = any(
            torch.equal(crop, pic[y : y + 16, x : x + 16])
            for pic in pics
            for y in range(pic.shape[0] - 15)
            for x in range(pic.shape[1] - 15)
        )
        assert found
    assert crops.num_examples == 2 * 4 + 1 + 2 * 1  # non-overlapping 16x16 patches


def test_crop_positions_are_uniform_over_all_valid_positions():
    pics = pictures()  # 25*55 + 1 + 18*5 = 1466 positions; the 16x16 picture has one
    crops = CropTrainSet(pics, patch=16, seed=2, device="cpu")
    sharding = Sharding(crops.num_examples, 7)
    small = pics[1].float() / 255
    hits = sum(
        int((crops.batch(s, torch.arange(2000), sharding)[:, 0] == small).all(-1).all(-1).sum())
        for s in range(10)
    )
    assert 4 <= hits <= 40  # expected 20000 / 1466 = 13.6


def test_a_rank_gets_exactly_its_rows_of_the_global_crops():
    crops = CropTrainSet(pictures(), patch=16, seed=3, device="cpu")
    sharding = Sharding(crops.num_examples, 7)
    whole = crops.batch(11, torch.arange(64), sharding)
    assert torch.equal(crops.batch(11, torch.arange(40, 64), sharding), whole[40:])
    assert not torch.equal(crops.batch(12, torch.arange(64), sharding), whole)
