import math

import pytest

from denoise_dist.config import Config, overlay
from denoise_dist.errors import TrainingDiverged
from denoise_dist.train import check_finite, lr_at, total_steps


def config(**values) -> Config:
    return overlay(Config(), values, "test")


def test_constant_schedule_is_the_learning_rate():
    cfg = config(lr=0.01)
    assert [lr_at(s, cfg, 100) for s in (0, 50, 99)] == [0.01] * 3


def test_warmup_then_cosine():
    cfg = config(lr=0.01, schedule="cosine", warmup_steps=10)
    assert lr_at(0, cfg, 100) == pytest.approx(0.001)          # 1/10 of the way up
    assert lr_at(9, cfg, 100) == pytest.approx(0.01 * 0.5 * (1 + math.cos(math.pi * 0.09)))
    assert lr_at(50, cfg, 100) == pytest.approx(0.005)          # half way down the cosine
    assert lr_at(99, cfg, 100) < 1e-5


def test_total_steps_from_epochs_or_max_steps():
    assert total_steps(config(epochs=2.5), steps_per_epoch=10) == 25
    assert total_steps(config(epochs=2.5, max_steps=7), steps_per_epoch=10) == 7


def test_check_finite_names_the_first_bad_step(tmp_path):
    check_finite([0.1, 0.2], last_step=10, run_dir=tmp_path)  # all finite: no error
    with pytest.raises(TrainingDiverged, match="loss became nan at step 9; last good "
                                               "checkpoint: none"):
        check_finite([0.1, float("nan"), float("inf")], last_step=10, run_dir=tmp_path)
