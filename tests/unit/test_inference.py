"""Tiled inference is exact: on a real photograph, tiles give the whole-image result."""

import pytest
import torch

from denoise_dist import images
from denoise_dist.inference import denoise_batched, denoise_tiled, receptive_radius, tile_starts
from denoise_dist.models import build_model
from tests.conftest import skimage_data


def test_tile_starts_cover_the_length_on_the_grid():
    assert tile_starts(100, 30, 4) == [0, 28, 56, 84]
    assert tile_starts(8, 30, 4) == [0]


def test_receptive_radius_grows_with_depth():
    torch.manual_seed(0)
    radii = [receptive_radius(build_model("unet", width=4, depth=d)) for d in (1, 2, 3)]
    assert radii[0] < radii[1] < radii[2]
    assert 8 <= radii[1] <= 64


@pytest.mark.parametrize(
    "name, kwargs, tile",
    [("unet", {"depth": 2}, 96), ("unet", {"depth": 3}, 130), ("dncnn", {"layers": 17}, 96)],
)
def test_tiles_reproduce_the_whole_image(name, kwargs, tile):
    torch.manual_seed(tile)
    model = build_model(name, width=6, **kwargs).eval()
    photo, _ = images.read_gray(skimage_data() / "camera.png")  # 512 x 512
    x = photo[None, :, :301, :457]  # an odd size: the edges pad as in a whole pass
    margin = receptive_radius(model) + getattr(model, "stride", 1)
    whole = denoise_batched(model, x)
    tiled = denoise_tiled(model, x, tile, margin)
    torch.testing.assert_close(tiled, whole, rtol=0, atol=2e-5)
    too_narrow = denoise_tiled(model, x, tile, margin=0)  # the check can fail
    assert (too_narrow - whole).abs().max() > 1e-3
