"""`evaluate`'s reported SSIM is the SSIM of the images it scores, checked against
scikit-image's independent implementation (not only that it lies in (0, 1])."""

import json

import numpy as np
import pytest

from denoise_dist.data import load_split, to_float
from denoise_dist.noise import fixed_noisy
from tests.conftest import skimage_data
from tests.helpers import run_cli, tiny_args

pytestmark = pytest.mark.integration
IMAGES, SIGMA = 64, 0.3


def test_evaluates_ssim_matches_scikit_image_on_the_scored_images(mnist_root, tmp_path):
    skimage_data()  # scikit-image is installed (a failure in CI, a skip elsewhere)
    from skimage.metrics import structural_similarity

    run, out = tmp_path / "run", tmp_path / "eval"
    assert (
        run_cli("train", *tiny_args(run, "--max-steps", "2", "--eval-every", "2")).returncode == 0
    )
    result = run_cli(
        "evaluate", str(run), "--sigmas", str(SIGMA), "--max-images", str(IMAGES),
        "--out", str(out), "--baselines", "builtin", "--cpu",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "eval.json").read_text())
    [row] = report["results"]
    clean = to_float(load_split("mnist", mnist_root, "test", download=False)[:IMAGES])
    noisy = fixed_noisy(clean, "gaussian", {"sigma": SIGMA}, "test", report["eval_seed"])
    reference = np.mean([
        structural_similarity(
            clean[i, 0].double().numpy(), noisy[i, 0].double().numpy(), data_range=1.0,
            gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
        )
        for i in range(IMAGES)
    ])  # fmt: skip
    assert row["identity"]["images"] == IMAGES
    assert row["identity"]["ssim"] == pytest.approx(reference, abs=1e-4)
