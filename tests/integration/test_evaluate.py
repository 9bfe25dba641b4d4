"""`denoise-dist evaluate` on a tiny model trained on the real MNIST, checked against an
independent numpy computation of per-image PSNR on the same fixed-seed noisy images."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from denoise_dist import classical, data, load_model
from denoise_dist.commands.evaluate.baselines import BUILTIN_METHODS
from denoise_dist.commands.evaluate.scores import NUM_HARDEST
from denoise_dist.config import NoiseConfig
from denoise_dist.noise import AMOUNTS, fixed_noisy
from tests.helpers import CONFIGS, run_cli, tiny_args
from tests.unit.test_classical import direct, extra_installed, numpy_blur, numpy_median3x3

pytestmark = pytest.mark.integration

N_IMAGES = 300
PSNR_ATOL_DB = 1e-3  # the package computes the MSE in float32, numpy here in float64


def numpy_test_images(mnist_root, n):
    """The first n MNIST test images, read straight from the IDX file: float [n,1,28,28]."""
    raw = (mnist_root / "MNIST" / "raw" / "t10k-images-idx3-ubyte").read_bytes()
    images = np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(-1, 28, 28)
    return images[:n, None].astype(np.float64) / 255.0


def per_image_psnr(pred, clean):
    mse = ((np.asarray(pred, dtype=np.float64) - clean) ** 2).reshape(len(clean), -1).mean(1)
    return 10 * np.log10(1.0 / mse)


def noisy_test_set(clean, name, params):
    """The evaluation noise is defined by the package's fixed-seed draw (tag "test")."""
    return fixed_noisy(
        torch.from_numpy(clean).float(), name, params, "test", NoiseConfig().eval_seed
    )


@pytest.fixture(scope="module")
def tiny_run(mnist_root, tmp_path_factory):
    run = tmp_path_factory.mktemp("eval") / "run"
    result = run_cli("train", *tiny_args(run))
    assert result.returncode == 0, result.stderr
    return run


def evaluate(*args, **kwargs):
    result = run_cli("evaluate", *map(str, args), **kwargs)
    assert result.returncode == 0, result.stderr
    return result


def test_numbers_match_an_independent_numpy_computation(tiny_run, mnist_root, tmp_path):
    out = tmp_path / "eval"
    result = evaluate(
        tiny_run, "--sigmas", "0.2", "0.5", "--max-images", N_IMAGES, "--out", out,
        "--baselines", "builtin",
    )  # fmt: skip
    report = json.loads((out / "eval.json").read_text())
    assert report["num_images"] == N_IMAGES and report["world_size"] == 1
    assert [row["sigma"] for row in report["results"]] == [0.2, 0.5]

    clean = numpy_test_images(mnist_root, N_IMAGES)
    model = load_model(tiny_run)
    for row in report["results"]:
        noisy = noisy_test_set(clean, "gaussian", {"sigma": row["sigma"]})
        with torch.no_grad():
            denoised = model(noisy).numpy()
        noisy = noisy.numpy()
        expected = {
            "model": per_image_psnr(denoised, clean),
            "identity": per_image_psnr(noisy, clean),
            "gaussian_blur": per_image_psnr(numpy_blur(noisy, row["blur_width"]), clean),
            "median3x3": per_image_psnr(numpy_median3x3(noisy), clean),
        }
        for method in BUILTIN_METHODS:
            assert row[method]["psnr"] == pytest.approx(
                expected[method].mean(), abs=PSNR_ATOL_DB
            ), method
            assert 0 < row[method]["ssim"] <= 1
        # Even 20 training steps beat the noisy input, in PSNR and in SSIM.
        assert row["model"]["psnr"] > row["identity"]["psnr"] + 1
        assert row["model"]["ssim"] > row["identity"]["ssim"]
    # The grid shows the images the model does worst on, at the last sigma.
    hardest = np.argsort(expected["model"], kind="stable")[:NUM_HARDEST]
    assert report["hardest"]["indices"] == hardest.tolist()

    for name in ("psnr_vs_sigma.png", "hardest.png"):
        with Image.open(out / name) as image:
            assert image.format == "PNG" and image.width > 100
    assert "PSNR: unet on 300 mnist test images" in result.stdout and "median3x3" in result.stdout


def test_blur_width_is_tuned_on_the_validation_split(tiny_run, mnist_root, tmp_path):
    out = tmp_path / "eval"
    evaluate(
        tiny_run, "--sigmas", "0.4", "--max-images", 50, "--out", out, "--baselines", "builtin"
    )
    width = json.loads((out / "eval.json").read_text())["results"][0]["blur_width"]
    val_size = json.loads((tiny_run / "config.json").read_text())["data"]["val_size"]
    train_images = data.load_split("mnist", mnist_root, "train", download=False)
    val = data.to_float(data.split_train_val(train_images, val_size)[1])
    noisy = fixed_noisy(val, "gaussian", {"sigma": 0.4}, "val", NoiseConfig().eval_seed)
    scores = [
        per_image_psnr(classical.gaussian_blur(noisy, w), val.double().numpy()).mean()
        for w in classical.BLUR_WIDTHS
    ]
    assert width == classical.BLUR_WIDTHS[int(np.argmax(scores))]


def launch_two_processes(*args):
    """Two processes over gloo, as a user launches them on a CPU machine."""
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(CONFIGS / "cpu_ddp.yaml"),
        "-m",
        "denoise_dist",
        "evaluate",
        *map(str, args),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def test_two_processes_report_the_same_numbers_as_one(tiny_run, tmp_path):
    # 201 images do not split evenly: every image must still count exactly once, for the
    # model and for each classical baseline (capped or not). No --cpu: on a machine
    # without a GPU, the config named for the case just works.
    args = ["--sigmas", "0.3", "0.6", "--max-images", "201"]
    args += ["--baselines", "builtin", "nl_means", "tv", "wavelet"]
    args += ["--max-baseline-images", "nl_means=7"]
    evaluate(tiny_run, *args, "--out", tmp_path / "one")
    two = launch_two_processes(tiny_run, *args, "--out", tmp_path / "two")
    assert two.returncode == 0, two.stderr
    one = json.loads((tmp_path / "one" / "eval.json").read_text())
    both = json.loads((tmp_path / "two" / "eval.json").read_text())
    assert (one["world_size"], both["world_size"]) == (1, 2)
    assert both["num_images"] == 201
    assert one["methods"] == both["methods"] == [*BUILTIN_METHODS, "nl_means", "tv", "wavelet"]
    for row_one, row_two in zip(one["results"], both["results"], strict=True):
        assert row_one["blur_width"] == row_two["blur_width"]
        assert row_one["tv_weight_factor"] == row_two["tv_weight_factor"]
        assert row_two["nl_means"]["images"] == 7 and row_two["tv"]["images"] == 201
        for method in one["methods"]:
            for metric in ("psnr", "ssim"):
                assert row_two[method][metric] == pytest.approx(row_one[method][metric], abs=1e-6)
            assert row_two[method].get("model_wins") == row_one[method].get("model_wins")
    assert both["hardest"]["indices"] == one["hardest"]["indices"]
    assert two.stdout.count("PSNR: unet") == 1  # only the main process prints


def test_classical_baselines_match_direct_library_calls_and_win_counts(
    tiny_run, mnist_root, tmp_path
):
    """BM3D, NL-means, TV and wavelet on the fixed-seed noisy test images, against direct
    calls to bm3d and scikit-image with the sigma computed here from the validation
    split; the count of images the model beats, against a count made here."""
    extra_installed()
    out, n, sigma = tmp_path / "eval", 8, 0.4
    caps = {"bm3d": 2, "nl_means": 5}
    result = evaluate(
        tiny_run, "--sigmas", sigma, "--max-images", n, "--out", out,
        "--max-baseline-images", *(f"{m}={c}" for m, c in caps.items()),
    )  # fmt: skip
    report = json.loads((out / "eval.json").read_text())
    [row] = report["results"]
    assert report["methods"] == [*BUILTIN_METHODS, "bm3d", "nl_means", "tv", "wavelet"]
    assert report["baseline_sigma"].startswith("known")
    assert {m: b["max_images"] for m, b in report["baselines"].items()} == {
        **caps,
        "tv": None,
        "wavelet": None,
    }
    assert report["failures"] == []

    # The sigma the baselines get: the noise's standard deviation on the validation split.
    val_size = json.loads((tiny_run / "config.json").read_text())["data"]["val_size"]
    train_images = data.load_split("mnist", mnist_root, "train", download=False)
    val = data.to_float(data.split_train_val(train_images, val_size)[1])
    val_noisy = fixed_noisy(val, "gaussian", {"sigma": sigma}, "val", NoiseConfig().eval_seed)
    known = float(np.std(val_noisy.double().numpy() - val.double().numpy()))
    assert row["baseline_sigma"] == pytest.approx(known, rel=1e-6)

    clean = numpy_test_images(mnist_root, n)
    noisy = noisy_test_set(clean, "gaussian", {"sigma": sigma})
    with torch.no_grad():
        model_psnr = per_image_psnr(load_model(tiny_run)(noisy).numpy(), clean)
    noisy = noisy.numpy().astype(np.float64)
    for method in ("bm3d", "nl_means", "tv", "wavelet"):
        count = caps.get(method, n)
        outputs = [
            direct(method, noisy[i, 0], known, row.get("tv_weight_factor", 1.0))
            for i in range(count)
        ]
        expected = per_image_psnr(np.stack(outputs)[:, None], clean[:count])
        assert row[method]["images"] == count, method
        assert row[method]["psnr"] == pytest.approx(expected.mean(), abs=PSNR_ATOL_DB), method
        wins = int((model_psnr[:count] > expected).sum())
        assert row[method]["model_wins"] == wins, method
        listed = row["per_image_psnr"][method]
        np.testing.assert_allclose(listed[:count], expected, atol=PSNR_ATOL_DB)
        assert listed[count:] == [None] * (n - count)
    median_psnr = per_image_psnr(numpy_median3x3(noisy), clean)
    assert row["median3x3"]["images"] == n
    assert row["median3x3"]["model_wins"] == int((model_psnr > median_psnr).sum())
    # At this sigma the tiny model loses to the median on some of these images and wins on
    # others (one by 0.03 dB), so the counts above test the comparison itself.
    assert 0 < row["median3x3"]["model_wins"] < n
    assert "images on which unet has the higher PSNR" in result.stdout
    wins = [line.split() for line in result.stdout.splitlines() if "/" in line]
    assert ["bm3d", f"{row['bm3d']['model_wins']}/2"] in wins
    for name in ("psnr_vs_sigma.png", "hardest.png"):
        with Image.open(out / name) as image:
            assert image.format == "PNG"
    with Image.open(out / "hardest.png") as image:
        assert image.width > 900  # noisy, unet, six baselines and clean side by side


def test_without_the_classical_extra_the_builtin_baselines_run_and_one_line_says_so(
    tiny_run, tmp_path
):
    # An import shim that makes bm3d and scikit-image look uninstalled.
    shim = tmp_path / "shim"
    (shim / "skimage").mkdir(parents=True)
    for module in (shim / "bm3d.py", shim / "skimage" / "__init__.py"):
        module.write_text("raise ImportError('not installed (test shim)')\n")
    env = {"PYTHONPATH": str(shim)}
    out = tmp_path / "eval"
    result = run_cli(
        "evaluate", str(tiny_run), "--sigmas", "0.3", "--max-images", "20", "--out", str(out),
        env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stdout.splitlines() if "denoise-dist[classical]" in line]
    assert len(notes) == 1 and "bm3d, nl_means, tv, wavelet" in notes[0]
    report = json.loads((out / "eval.json").read_text())
    assert report["methods"] == list(BUILTIN_METHODS)
    assert report["baselines_not_installed"] == ["bm3d", "nl_means", "tv", "wavelet"]
    asked = run_cli("evaluate", str(tiny_run), "--baselines", "bm3d", env=env)
    assert asked.returncode == 2 and "Traceback" not in asked.stderr
    assert asked.stderr.strip() == (
        "denoise-dist: error: bm3d needs the classical extra: pip install 'denoise-dist[classical]'"
    )


def test_a_baseline_failing_on_one_image_is_reported_and_the_rest_is_scored(tmp_path):
    """A folder model evaluated on a folder whose held-out files include a 6x6 image (too
    small for BM3D's 8x8 blocks) and a flat one."""
    extra_installed()
    folder = tmp_path / "photos"
    folder.mkdir()
    gen = torch.Generator().manual_seed(0)
    for i in range(6):
        smooth = classical.gaussian_blur(torch.rand(1, 1, 48, 48, generator=gen), 2.0)[0, 0]
        pixels = ((smooth - smooth.min()) / (smooth.max() - smooth.min()) * 255).byte()
        Image.fromarray(pixels.numpy()).save(folder / f"img{i}.png")
    _, held_out = data.folder_files(folder, 3)
    Image.fromarray(np.full((6, 6), 90, np.uint8)).save(held_out[0])  # tiny
    Image.fromarray(np.full((40, 40), 128, np.uint8)).save(held_out[1])  # flat
    run = tmp_path / "run"
    trained = run_cli(
        "train", "--dataset", "folder", "--data-dir", str(folder), "--output-dir", str(run),
        "--width", "8", "--patch-size", "16", "--batch-size", "8", "--max-steps", "4",
        "--eval-every", "2", "--log-every", "2", "--checkpoint-every", "2", "--val-size", "3",
        "--sigma", "0.1", "--cpu",
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    out = tmp_path / "eval"
    result = evaluate(
        run, "--sigmas", "0.1", "--baselines", "bm3d", "tv", "--baseline-sigma", "estimated",
        "--out", out,
    )  # fmt: skip
    report = json.loads((out / "eval.json").read_text())
    [failure] = report["failures"]
    assert failure["method"] == "bm3d" and failure["image"] == 0 and failure["sigma"] == 0.1
    assert "smaller than block size" in failure["error"]
    [row] = report["results"]
    assert row["bm3d"]["images"] == 2 and row["bm3d"]["failed"] == 1
    assert row["tv"]["images"] == 3 and "failed" not in row["tv"]
    assert row["model"]["images"] == 3
    assert row["baseline_sigma"] is None and report["baseline_sigma"].startswith("estimated")
    assert "bm3d failed on image 0 at sigma 0.1: ValueError: Image cannot be smaller" in (
        result.stdout
    )
    assert (out / "hardest.png").is_file() and (out / "psnr_vs_sigma.png").is_file()


def test_a_folder_with_one_held_out_file_is_scored_as_a_folder(tmp_path):
    """One held-out file is still a folder's held-out set: noise drawn under its own tag
    ("test/0", as for the first of several files), scored whole, named in the report."""
    folder = tmp_path / "photos"
    folder.mkdir()
    ramp = np.linspace(0, 255, 40 * 56).reshape(40, 56)
    for i in range(4):
        Image.fromarray(np.roll(ramp, 9 * i, axis=1).astype(np.uint8)).save(folder / f"{i}.png")
    run = tmp_path / "run"
    flags = "--width 8 --patch-size 16 --batch-size 8 --max-steps 2 --eval-every 2 --cpu"
    trained = run_cli(
        "train", "--dataset", "folder", "--data-dir", str(folder), "--val-size", "1",
        "--output-dir", str(run), *flags.split(),
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    out = tmp_path / "eval"
    evaluate(run, "--sigmas", "0.2", "--baselines", "builtin", "--out", out)
    report = json.loads((out / "eval.json").read_text())
    [held_out] = data.folder_files(folder, 1)[1]
    assert report["num_images"] == 1 and report["image_names"] == [held_out.name]
    clean = np.asarray(Image.open(held_out), dtype=np.float64)[None, None] / 255
    noisy = fixed_noisy(
        torch.from_numpy(clean).float(), "gaussian", {"sigma": 0.2}, "test/0", report["eval_seed"]
    )
    with torch.no_grad():
        denoised = load_model(run)(noisy).numpy()
    [row] = report["results"]
    assert row["identity"]["psnr"] == pytest.approx(
        per_image_psnr(noisy.numpy(), clean)[0], abs=PSNR_ATOL_DB
    )
    assert row["model"]["psnr"] == pytest.approx(
        per_image_psnr(denoised, clean)[0], abs=PSNR_ATOL_DB
    )
    assert report["hardest"]["indices"] == [0] and (out / "hardest.png").is_file()


def test_salt_and_pepper_model_is_evaluated_on_its_own_noise(mnist_root, tmp_path):
    run = tmp_path / "run"
    trained = run_cli("train", *tiny_args(run, "--noise", "salt_pepper", "--max-steps", "10"))
    assert trained.returncode == 0, trained.stderr
    # default --out: eval-<noise> in the run folder
    evaluate(run, "--max-images", 100, "--baselines", "builtin")
    report = json.loads((run / "eval-salt_pepper" / "eval.json").read_text())
    assert report["noise"] == "salt_pepper" and report["level"] == "amount"
    assert [row["amount"] for row in report["results"]] == list(AMOUNTS)
    clean = numpy_test_images(mnist_root, 100)
    for row in report["results"]:
        noisy = noisy_test_set(clean, "salt_pepper", {"salt_pepper": row["amount"]}).numpy()
        assert np.mean(noisy != clean.astype(np.float32)) > row["amount"] / 4
        assert row["identity"]["psnr"] == pytest.approx(
            per_image_psnr(noisy, clean).mean(), abs=PSNR_ATOL_DB
        )
        assert row["median3x3"]["psnr"] == pytest.approx(
            per_image_psnr(numpy_median3x3(noisy), clean).mean(), abs=PSNR_ATOL_DB
        )


def test_poisson_gaussian_uses_the_models_photon_count(tiny_run, mnist_root, tmp_path):
    out = tmp_path / "eval"
    result = evaluate(
        tiny_run,
        "--noise",
        "poisson_gaussian",
        "--sigmas",
        "0.05",
        "--max-images",
        100,
        "--out",
        out,
        "--baselines",
        "builtin",
    )
    assert "trained on gaussian noise, evaluating on poisson_gaussian" in result.stderr
    report = json.loads((out / "eval.json").read_text())
    assert report["fixed_params"] == {"photons": NoiseConfig().photons}
    clean = numpy_test_images(mnist_root, 100)
    params = {"photons": NoiseConfig().photons, "sigma": 0.05}
    noisy = noisy_test_set(clean, "poisson_gaussian", params).numpy()
    assert report["results"][0]["identity"]["psnr"] == pytest.approx(
        per_image_psnr(noisy, clean).mean(), abs=PSNR_ATOL_DB
    )


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["--amounts", "0.1"], 2, "--amounts is for salt_pepper"),
        (["--noise", "salt_pepper", "--sigmas", "0.1"], 2, "salt_pepper has no sigma"),
        (["--sigmas", "-0.1"], 2, "--sigmas must be >= 0"),
        (["--max-images", "0"], 2, "--max-images must be >= 1"),
    ],
)
def test_bad_options_are_one_line_errors(tiny_run, tmp_path, args, code, message):
    result = run_cli("evaluate", str(tiny_run), *args, "--out", str(tmp_path / "e"))
    assert result.returncode == code
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "e").exists()


def test_a_missing_or_foreign_model_is_a_clear_error(tmp_path):
    missing = run_cli("evaluate", str(tmp_path / "nope"))
    assert missing.returncode == 1 and "no model at" in missing.stderr
    fake = tmp_path / "fake.safetensors"
    fake.write_bytes(b"\x00" * 64)
    foreign = run_cli("evaluate", str(fake))
    assert foreign.returncode == 1 and "not a readable safetensors file" in foreign.stderr
    assert "Traceback" not in missing.stderr + foreign.stderr


def test_the_data_root_follows_the_environment_when_the_model_has_moved(mnist_root, tmp_path):
    """A model trained with --data-dir on one machine, evaluated on another: the training
    machine's folder is gone, $DENOISE_DIST_DATA says where the data is here."""
    elsewhere = tmp_path / "training-machine-data"
    elsewhere.symlink_to(mnist_root)
    run = tmp_path / "run"
    trained = run_cli("train", *tiny_args(run, "--max-steps", "5", "--data-dir", str(elsewhere)))
    assert trained.returncode == 0, trained.stderr
    elsewhere.unlink()
    result = run_cli(
        "evaluate",
        str(run),
        "--max-images",
        "20",
        "--sigmas",
        "0.5",
        "--baselines",
        "builtin",
        env={"DENOISE_DIST_DATA": str(mnist_root)},
    )
    assert result.returncode == 0, result.stderr
    # And with nothing to go on, the error says what to fix.
    lost = run_cli(
        "evaluate",
        str(run),
        "--max-images",
        "20",
        "--data-dir",
        str(tmp_path / "nowhere"),
        "--baselines",
        "builtin",
    )
    assert lost.returncode == 2 and "put train-images-idx3-ubyte" in lost.stderr
