import pytest
import torch

from denoise_dist.export import load_model, read_meta, save_model
from denoise_dist.models import REGISTRY, build_model, model_kwargs


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_maps_28x28_to_28x28_in_unit_range(name):
    model = build_model(name, **model_kwargs(name, 8, 0.2)).eval()
    out = model(torch.rand(3, 1, 28, 28))
    assert out.shape == (3, 1, 28, 28)
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("name", ["conv_ae", "unet"])
@pytest.mark.parametrize("size", [(28, 28), (33, 47), (5, 9), (64, 64)])
def test_fully_convolutional_models_take_any_size(name, size):
    model = build_model(name, width=4).eval()
    assert model(torch.rand(2, 1, *size)).shape == (2, 1, *size)


def test_seed_ae_is_conv_then_linear_code_with_dropout():
    model = build_model("seed_ae", dropout=0.3)
    kinds = {type(m).__name__ for m in model.modules()}
    assert {"Conv2d", "Linear", "Dropout"} <= kinds
    with pytest.raises(ValueError, match="28x28"):
        model(torch.rand(1, 1, 32, 32))


def test_unknown_model_name():
    with pytest.raises(ValueError, match="unknown model"):
        build_model("vit")


def test_export_round_trip(tmp_path):
    model = build_model("unet", width=4).eval()
    path = tmp_path / "best_model.safetensors"
    save_model(model, path, {"model": "unet", "model_kwargs": {"width": 4}})
    loaded = load_model(tmp_path)  # the run folder works as well as the file
    assert not loaded.training
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(loaded(x), model(x))
    assert read_meta(path)["model"] == "unet"
