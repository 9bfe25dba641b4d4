"""The held-out files of a folder, on which every own-image figure rests: fixed for every
run, disjoint from the training files, and the ones validation crops come from. That
`evaluate` scores exactly them is checked in test_folder.py, on its trained run."""

import pytest
import torch

from denoise_dist import data
from denoise_dist.images import find_images
from tests.helpers import folder_settings

pytestmark = pytest.mark.integration
HELD_OUT = 4
PATCH = 32


def test_the_held_out_files_are_fixed_and_disjoint_from_the_training_files(photo_folder):
    train, held_out = data.folder_files(photo_folder, HELD_OUT)
    assert len(held_out) == HELD_OUT and not set(train) & set(held_out)
    assert sorted(train + held_out) == sorted(find_images(photo_folder, True))
    assert data.folder_files(photo_folder, HELD_OUT) == (train, held_out)  # every call
    for seed in (0, 1):  # the run's seed draws crops and noise, never the split
        splits = data.load(folder_settings(photo_folder, HELD_OUT, PATCH), seed, "cpu")
        # Training pixels are the training files' exactly; validation crops the held-out's.
        train_pixels = [p for _, p in data.read_folder_images(train, PATCH)]
        assert splits.train.nbytes == sum(p.numel() for p in train_pixels)
        assert torch.equal(splits.train.pixels, torch.cat([p.flatten() for p in train_pixels]))
        held_pixels = [p for _, p in data.read_folder_images(held_out, PATCH)]
        expected = data.fixed_crops(held_pixels, PATCH, data.VAL_CROPS_PER_IMAGE)
        assert torch.equal(splits.val, expected)
