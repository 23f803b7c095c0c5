"""plait.resume: which config changes a resume accepts, compared with the checkpoint's config."""

from __future__ import annotations

import pytest

from plait.config import load_config
from plait.errors import ConfigError
from plait.resume import check, config_changes, describe


def cfg(*overrides: str) -> dict:
    return load_config(None, list(overrides)).to_dict()


def test_layout_logging_checkpoint_and_eval_changes_are_free():
    old = cfg()
    new = cfg("parallel.tp=2", "parallel.zero_stage=3", "parallel.dp_engine=deepspeed",
              "train.grad_accum=4", "train.device=cpu", "train.compile=true", "log.every=10",
              "log.run_dir=elsewhere", "checkpoint.every=5", "checkpoint.dir=x",
              "train.eval_every=3", "train.eval_batches=9", "name=other")  # fmt: skip
    ch = config_changes(old, new)
    assert ch.schedule == {} and ch.numbers == {}
    assert check("ck", old, new) == ch


def test_schedule_inputs_are_reported_as_schedule_changes():
    ch = config_changes(
        cfg("train.steps=8"),
        cfg(
            "train.steps=16",
            "optim.warmup_steps=3",
            "optim.schedule=linear",
            "optim.lr=1e-3",
            "optim.min_lr_ratio=0.1",
        ),  # fmt: skip
    )
    assert ch.numbers == {}
    assert ch.schedule == {
        "optim.lr": (3e-4, 1e-3),
        "optim.min_lr_ratio": (0.0, 0.1),
        "optim.schedule": ("cosine", "linear"),
        "optim.warmup_steps": (0, 3),
        "train.steps": (8, 16),
    }
    assert describe({"train.steps": (8, 16), "optim.schedule": ("cosine", "linear")}) == (
        "train.steps 8 -> 16, optim.schedule 'cosine' -> 'linear'"
    )


@pytest.mark.parametrize(
    "override",
    ["model.n_layers=4", "model.dropout=0.1", "model.hf_overrides={hidden_size: 64}",
     "data.name=synthetic", "data.seq_len=64", "data.eval_fraction=0.2", "train.seed=1",
     "train.global_batch=64", "train.dtype=bf16", "train.grad_clip=0.5", "optim.name=sgd",
     "optim.weight_decay=0.1", "optim.betas=[0.9,0.99]", "optim.eps=1e-6", "optim.momentum=0.9"],
)  # fmt: skip
def test_changes_to_the_numbers_are_refused_naming_the_keys_unless_allowed(override):
    key = override.split("=")[0]
    old, new = cfg("train.steps=8"), cfg(override, "train.steps=16")
    with pytest.raises(ConfigError) as e:
        check("runs/a/checkpoints/step-00000008", old, new)
    msg = str(e.value)
    assert "\n" not in msg and "step-00000008" in msg and f"{key} " in msg
    assert "checkpoint.allow_config_change=true" in msg and "train.steps" not in msg
    allowed = check(
        "ck", old, cfg(override, "train.steps=16", "checkpoint.allow_config_change=true")
    )
    assert list(allowed.numbers) == [key] and list(allowed.schedule) == ["train.steps"]


def test_keys_only_one_config_has_are_not_changes():
    """A checkpoint from a plait version without some option compares on the shared keys."""
    old, new = cfg(), cfg()
    del old["optim"]["min_lr_ratio"], old["log"]
    new["train"]["future_option"] = 1
    ch = config_changes(old, new)
    assert ch.schedule == {} and ch.numbers == {}
    assert describe(config_changes(old, cfg("train.seed=3")).numbers) == "train.seed 0 -> 3"
