"""The model table, the models' shapes, keyed dropout, and export."""

from dataclasses import fields

import pytest
import torch

from denoise_dist.config import ModelConfig
from denoise_dist.export import load_model, read_meta, save_model
from denoise_dist.models import MODELS, build_model, model_kwargs
from denoise_dist.noise import Draw
from denoise_dist.rng import key


def small(name: str):
    return build_model(name, **model_kwargs(name, ModelConfig(width=8, dropout=0.2)))


def test_the_table_names_config_fields_that_the_constructors_take():
    config_fields = {f.name for f in fields(ModelConfig)}
    for name, spec in MODELS.items():
        assert set(spec.fields) <= config_fields, name
        model = spec.cls(**model_kwargs(name, ModelConfig()))  # every field is accepted
        assert isinstance(model, torch.nn.Module)
    used = {f for spec in MODELS.values() for f in spec.fields}
    assert used == config_fields - {"model"}  # no field that no model reads


@pytest.mark.parametrize("name", sorted(MODELS))
def test_maps_28x28_to_28x28_in_unit_range(name):
    out = small(name).eval()(torch.rand(3, 1, 28, 28))
    assert out.shape == (3, 1, 28, 28)
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("name", [n for n, s in MODELS.items() if s.fully_convolutional])
@pytest.mark.parametrize("size", [(28, 28), (33, 47), (5, 9), (64, 64)])
def test_fully_convolutional_models_take_any_size(name, size):
    assert small(name).eval()(torch.rand(2, 1, *size)).shape == (2, 1, *size)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_unet_depth_sets_levels_and_padding(depth):
    model = build_model("unet", width=4, depth=depth).eval()
    assert model.stride == 2**depth and len(model.downs) == depth
    assert model(torch.rand(1, 1, 29, 31)).shape == (1, 1, 29, 31)


def test_seed_ae_is_conv_then_linear_code_with_dropout():
    model = build_model("seed_ae", dropout=0.3)
    kinds = {type(m).__name__ for m in model.modules()}
    assert {"Conv2d", "Linear", "KeyedDropout"} <= kinds
    with pytest.raises(ValueError, match="28x28"):
        model(torch.rand(1, 1, 32, 32))


def test_keyed_dropout_masks_depend_on_the_global_row_not_the_batch_split():
    model = build_model("seed_ae", dropout=0.5).train()
    x = torch.rand(8, 1, 28, 28)
    k = key("dropout", 0, 5)
    whole = model(x, Draw(k, torch.arange(8)))
    halves = torch.cat(
        [model(x[:4], Draw(k, torch.arange(4))), model(x[4:], Draw(k, torch.arange(4, 8)))]
    )
    torch.testing.assert_close(halves, whole, rtol=0, atol=1e-6)
    other_step = model(x, Draw(key("dropout", 0, 6), torch.arange(8)))
    assert not torch.allclose(other_step, whole)
    assert torch.equal(model.eval()(x), model.eval()(x))  # no dropout in eval mode


def test_unknown_model_name():
    with pytest.raises(ValueError, match="unknown model"):
        build_model("vit")


def test_export_round_trip(tmp_path):
    model = build_model("unet", width=4, depth=3).eval()
    path = tmp_path / "best_model.safetensors"
    save_model(model, path, {"model": "unet", "model_kwargs": {"width": 4, "depth": 3}})
    loaded = load_model(tmp_path)  # the run folder works as well as the file
    assert not loaded.training
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(loaded(x), model(x))
    assert read_meta(path)["model"] == "unet"


def test_dncnn_is_the_papers_network_and_predicts_the_noise():
    model = build_model("dncnn", **model_kwargs("dncnn", ModelConfig(width=64)))
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 17 and {c.out_channels for c in convs[:-1]} == {64}
    # Zhang et al.'s DnCNN-S has about 556k weights (without batch norm's 2x64 per layer).
    assert sum(p.numel() for p in model.parameters()) == 555_137
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    torch.nn.init.zeros_(convs[-1].weight)
    torch.nn.init.zeros_(convs[-1].bias)
    x = torch.rand(2, 1, 20, 24)
    assert torch.equal(model.train()(x), x)  # a zero noise estimate leaves the input as is
