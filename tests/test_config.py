"""Every class of config mistake is refused before anything runs, with the key, the value and
what is allowed."""

from __future__ import annotations

import pytest
import torch.distributed as dist

from plait.config import field_help, load_config, parse_overrides
from plait.errors import ConfigError
from plait.trainer import train, validate


def err(overrides, path=None) -> str:
    with pytest.raises(ConfigError) as e:
        load_config(path, overrides)
    return str(e.value)


def test_defaults_load_and_round_trip():
    cfg = load_config(None, [])
    assert cfg.parallel.pp_schedule == "1F1B" and cfg.log.wandb == "offline"
    assert load_config(None, []).to_dict() == cfg.to_dict()
    assert "checkpoint.async" in field_help() and all(field_help().values())


def test_unknown_key_suggests_the_near_one():
    msg = err(["train.stpes=3"])
    assert "train.stpes" in msg and "did you mean 'steps'" in msg and "global_batch" in msg


def test_unknown_section():
    msg = err(["trian.steps=3"])
    assert "'trian'" in msg and "did you mean 'train'" in msg


def test_wrong_type_names_key_and_type():
    msg = err(["train.steps=ten"])
    assert "train.steps" in msg and "'ten'" in msg and "an integer" in msg
    assert "true or false" in err(["train.compile=maybe"])


def test_bad_choice_lists_allowed_and_suggests():
    msg = err(["parallel.pp_schedule=1f1b"])
    assert "'1F1B'" in msg and "GPipe" in msg and "did you mean '1F1B'" in msg


def test_impossible_values():
    assert "train.steps" in err(["train.steps=0"]) and ">= 1" in err(["train.steps=0"])
    assert "optim.lr" in err(["optim.lr=-1"])
    assert "parallel.zero_stage" in err(["parallel.zero_stage=4"])
    assert "sequence_parallel" in err(["parallel.sequence_parallel=true"])
    assert "data.name" in err(["model.name=gpt", "data.name=digits"])


def test_yaml_numbers_and_switches():
    cfg = load_config(None, ["optim.lr=1e-3", "log.wandb=off", "optim.betas=[0.9,0.99]"])
    assert cfg.optim.lr == 1e-3 and cfg.log.wandb == "off" and cfg.optim.betas == [0.9, 0.99]
    assert parse_overrides(["a.b.c=1"]) == {"a": {"b": {"c": 1}}}
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["train.steps"])


def test_yaml_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train: {steps: 7}\nlog: {wandb: off}\n")
    assert load_config(p, ["train.seed=3"]).train.steps == 7
    assert "does not exist" in err([], tmp_path / "missing.yaml")
    p.write_text("train: [unclosed\n")
    assert "not valid YAML" in err([], p)


def test_world_size_mismatch_lists_valid_layouts():
    cfg = load_config(None, ["parallel.tp=4", "parallel.dp_shard=1"])
    with pytest.raises(ConfigError) as e:
        validate(cfg, 2)
    assert "world size is 2" in str(e.value)
    assert (
        "layouts of 2 ranks this model and batch accept: pp=1 x dp_shard=2 x tp=1; pp=1 x dp_shard=1 x tp=2"
        in str(e.value)
    )
    with pytest.raises(ConfigError, match="does not divide the world size 6"):
        validate(load_config(None, ["parallel.tp=4"]), 6)


def test_non_divisible_dims():
    with pytest.raises(ConfigError, match=r"train.global_batch: 30 .* multiple of 4"):
        validate(load_config(None, ["train.global_batch=30"]), 4)
    with pytest.raises(ConfigError, match=r"model.n_heads: 5 does not divide model.dim=64"):
        validate(load_config(None, ["model.n_heads=5"]), 1)
    with pytest.raises(ConfigError, match=r"model.preset: 'tinny'.*did you mean 'tiny'"):
        validate(load_config(None, ["model.preset=tinny"]), 1)


def test_no_process_group_is_created_for_a_bad_layout(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "1")  # nothing listens: reaching init would hang, not fail
    with pytest.raises(ConfigError):
        train(load_config(None, ["parallel.tp=4", "parallel.dp_shard=1"]))
    assert not dist.is_initialized()


@pytest.mark.parametrize(
    "overrides, world, note",
    [
        (["model.name=seed_mlp", "model.batchnorm=true"], 1, None),
        (["model.name=seed_mlp", "model.batchnorm=true"], 2, "model.batchnorm normalises per slice (dp=2)"),
        (["model.name=seed_mlp", "model.batchnorm=true", "parallel.pp=2"], 2,
         "model.batchnorm normalises per slice (pp_microbatches=4)"),
        (["model.name=seed_mlp", "model.batchnorm=true", "train.grad_accum=2"], 1,
         "model.batchnorm normalises per slice (grad_accum=2)"),
        (["model.name=seed_mlp", "model.dropout=0.1"], 1, None),
        (["model.name=seed_mlp", "model.dropout=0.1", "parallel.tp=2"], 2,
         "model.dropout draws other masks (tp=2)"),
        (["model.dropout=0.1", "parallel.pp=2", "train.grad_accum=2"], 4,
         "model.dropout draws other masks (dp=2, pp=2, grad_accum=2)"),
        (["model.name=seed_mlp", "model.batchnorm=true", "model.dropout=0.1"], 2,
         "model.batchnorm normalises per slice (dp=2); model.dropout draws other masks (dp=2)"),
        (["model.name=seed_mlp"], 8, None),  # nothing layout-dependent: no note
    ],
)  # fmt: skip
def test_layout_note_names_options_whose_numbers_depend_on_the_layout(overrides, world, note):
    from plait.layout_notes import layout_note
    from plait.mesh import ParallelDims

    cfg = load_config(None, ["data.name=synthetic", *overrides])
    got = layout_note(cfg, ParallelDims.from_config(cfg, world))
    assert got is None if note is None else got.startswith(f"note: {note}, so this run"), got
