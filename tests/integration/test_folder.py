"""Training on a folder of your own images: real photographs (scikit-image's), random
crops, held-out files, bad files, resume and 2-process equivalence."""

import json
import re
import shutil

import pytest
import torch

from denoise_dist import data
from tests.conftest import skimage_data
from tests.helpers import (
    CONFIGS,
    assert_same_weights,
    final_weights,
    launch,
    loss_curve,
    run_cli,
)

pytestmark = pytest.mark.integration


def folder_args(run_dir, folder, *extra):
    return [
        "--dataset",
        "folder",
        "--data-dir",
        str(folder),
        "--output-dir",
        str(run_dir),
        "--width",
        "8",
        "--patch-size",
        "32",
        "--batch-size",
        "16",
        "--max-steps",
        "20",
        "--eval-every",
        "10",
        "--log-every",
        "5",
        "--checkpoint-every",
        "10",
        "--sigma",
        "0.1",
        "--val-size",
        "4",
        *extra,
    ]


@pytest.fixture(scope="module")
def folder_with_a_bad_file(photo_folder, tmp_path_factory):
    folder = tmp_path_factory.mktemp("mixed")
    shutil.copytree(photo_folder, folder, dirs_exist_ok=True)
    shutil.copy(skimage_data() / "multipage_rgb.tif", folder / "more")  # Pillow cannot read it
    return folder


@pytest.fixture(scope="module")
def folder_run(folder_with_a_bad_file, tmp_path_factory):
    run = tmp_path_factory.mktemp("folder") / "run"
    result = run_cli("train", *folder_args(run, folder_with_a_bad_file))
    assert result.returncode == 0, result.stderr
    return run, result


def test_trains_on_random_crops_and_names_the_file_it_skips(folder_run):
    run, result = folder_run
    skipped = [line for line in result.stderr.splitlines() if "multipage_rgb.tif" in line]
    assert len(skipped) == 1 and skipped[0].startswith("warning: skipped")
    described = re.search(r"(\d+) training files .* (\d+) held-out files", result.stdout)
    assert described and sum(map(int, described.groups())) == 18  # every readable photograph
    summary = json.loads((run / "summary.json").read_text())
    assert summary["step"] == 20
    config = json.loads((run / "config.json").read_text())
    assert config["data"]["dataset"] == "folder" and config["data"]["patch_size"] == 32


def test_evaluate_scores_the_held_out_files_whole_against_the_baselines(
    folder_run, folder_with_a_bad_file, tmp_path
):
    run, _ = folder_run
    out = tmp_path / "eval"
    result = run_cli(
        "evaluate", str(run), "--sigmas", "0.1", "0.2", "--out", str(out),
        "--baselines", "builtin",  # BM3D takes minutes on these photographs
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "eval.json").read_text())
    assert report["dataset"] == "folder" and report["split"].startswith("held-out files")
    assert report["num_images"] == 4
    # Exactly the held-out files, the ones training never saw (tests/integration/test_folder_split)
    _, held_out = data.folder_files(folder_with_a_bad_file, 4)
    assert report["image_names"] == [
        p.relative_to(folder_with_a_bad_file).as_posix() for p in held_out
    ]
    assert report["blur_widths_from"].startswith("crops of the training files")
    for row in report["results"]:
        for method in ("model", "identity", "gaussian_blur", "median3x3"):
            assert 5 < row[method]["psnr"] < 60 and 0 < row[method]["ssim"] <= 1
        assert row["gaussian_blur"]["psnr"] > row["identity"]["psnr"]  # a tuned blur helps
    assert (out / "hardest.png").is_file()


def test_folder_resume_is_exact(photo_folder, tmp_path):
    full, split = tmp_path / "full", tmp_path / "split"
    assert run_cli("train", *folder_args(full, photo_folder)).returncode == 0
    assert run_cli("train", *folder_args(split, photo_folder, "--max-steps", "10")).returncode == 0
    resumed = run_cli("train", *folder_args(split, photo_folder))
    assert resumed.returncode == 0 and "at step 10" in resumed.stdout
    assert_same_weights(final_weights(full, 20), final_weights(split, 20))
    assert loss_curve(full) == loss_curve(split)


def test_two_processes_train_on_the_same_crops_as_one(photo_folder, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert run_cli("train", *folder_args(one, photo_folder, "--max-steps", "10")).returncode == 0
    result = launch(
        ["--config_file", str(CONFIGS / "cpu_ddp.yaml")],
        "denoise_dist.train",
        folder_args(two, photo_folder, "--max-steps", "10"),
    )
    assert result.returncode == 0, result.stderr
    for (s1, l1, g1), (s2, l2, g2) in zip(loss_curve(one), loss_curve(two), strict=True):
        assert s1 == s2 and l1 == pytest.approx(l2, rel=1e-5) and g1 == pytest.approx(g2, rel=1e-5)
    # The weights, not only two logged scalars: the same crops give the same model, to the
    # float rounding of two half-batch gradients added (as tests/integration/test_distributed).
    weights, weights_one = final_weights(two, 10), final_weights(one, 10)
    assert weights.keys() == weights_one.keys()
    for name in weights:
        torch.testing.assert_close(weights[name], weights_one[name], atol=1e-5, rtol=0)


def test_bad_folders_are_one_line_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    unreadable = tmp_path / "unreadable"
    unreadable.mkdir()
    shutil.copy(skimage_data() / "multipage_rgb.tif", unreadable / "a.tif")
    shutil.copy(skimage_data() / "multipage_rgb.tif", unreadable / "b.tif")
    cases = [
        (empty, [], "holds no PNG, JPEG, TIFF or BMP files"),
        (tmp_path / "missing", [], "is not a folder"),
        (unreadable, ["--val-size", "1"], "no readable training image"),
        (empty, ["--model", "seed_ae"], "seed_ae takes 28x28 images only"),
    ]
    for folder, extra, message in cases:  # one run folder: a failed start leaves no checkpoint
        result = run_cli(
            "train",
            "--dataset",
            "folder",
            "--data-dir",
            str(folder),
            "--output-dir",
            str(tmp_path / "run"),
            *extra,
        )
        assert result.returncode == 2, (message, result.stderr)
        errors = [line for line in result.stderr.splitlines() if not line.startswith("warning")]
        assert len(errors) == 1 and message in errors[0], result.stderr
        assert "Traceback" not in result.stderr
