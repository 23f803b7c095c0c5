"""The Python API: plait.train with one's own model object, plait.parallelize in one's own
loop, checkpoints from that loop, the contract's one-line refusals, and __all__."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import plait
from helpers import RTOL, assert_same_run, run_in_ranks

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import own_loop  # noqa: E402
import own_model  # noqa: E402


def test_all_lists_the_public_api_and_each_name_resolves():
    assert sorted(plait.__all__) == sorted(dir(plait))
    for name in plait.__all__:
        assert getattr(plait, name) is not None, name
    import plait.parallelize as _wrap_order  # noqa: F401 - modules sharing the functions' names
    import plait.train as _entry  # noqa: F401

    assert plait.train.__module__ == plait.parallelize.__module__ == "plait.api"
    with pytest.raises(AttributeError):
        plait.build_model  # noqa: B018 - private: not part of the API


# ---------------------------------------------------------------- the contract, before launch


class _Mean(own_model.TinyDecoder):
    def loss(self, output, batch):
        return nn.functional.cross_entropy(output.flatten(0, -2), batch["target"].flatten())


class _NoLayers(plait.PlaitModel):
    task = "lm"

    def __init__(self):
        super().__init__()
        self.vocab_size = 8
        self.blocks = nn.Sequential(nn.Embedding(8, 4), nn.Linear(4, 8))

    def forward(self, x):
        return self.blocks(x)


class _HeadAlways(own_model.TinyDecoder):
    def forward(self, tokens):
        h = self.embed(tokens) if self.embed is not None else tokens
        for block in self.layers.values():
            h = block(h)
        return self.head(self.norm(h))  # breaks on a stage without norm/head


class _NoPlan(own_model.TinyDecoder):
    def tp_plan(self):
        return {}


@pytest.mark.parametrize(
    "model, layout, message",
    [
        (_NoLayers, [], "model _NoLayers: has no `layers`; put its blocks in self.layers"),
        (_Mean, [], "model _Mean: loss() is not a sum over samples (is it a mean?)"),
        (_HeadAlways, ["parallel.pp=2"], "forward fails on a first pipeline stage whose post modules (norm, head) are None"),
        (_NoPlan, ["parallel.tp=2"], "model _NoPlan: has no tp_plan(), which parallel.tp=2 needs"),
        (nn.Linear, [], "is not a plait.PlaitModel"),
    ],
)  # fmt: skip
def test_a_model_breaking_the_contract_gets_one_line_before_any_process_group(
    model, layout, message, tmp_path
):
    factory = (lambda: nn.Linear(2, 2)) if model is nn.Linear else model
    with pytest.raises(plait.ConfigError) as e:
        plait.train(None, [*own_model.CONFIG, *layout, f"log.run_dir={tmp_path}"], model=factory)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert not torch.distributed.is_initialized()
    assert not any(tmp_path.iterdir())  # nothing ran


# ---------------------------------------------------------------- the examples, as documented


@pytest.mark.timeout(1200)
def test_own_model_under_dp_tp_pp_matches_one_process(tmp_path):
    ref = own_model.run([], str(tmp_path / "one"), return_state=True)
    (got,) = run_in_ranks(
        "api_ranks:own_model_3d", (str(tmp_path / "3d"),), 8, tmp_path, timeout=1100
    )[:1]
    assert_same_run(ref, got)


@pytest.mark.timeout(900)
def test_own_loop_under_dp_tp_matches_one_process_and_its_checkpoint_loads_anywhere(tmp_path):
    ref, par = own_loop.run({})
    ranks = run_in_ranks(
        "api_ranks:own_loop_2d", (str(tmp_path / "ckpt"),), 4, tmp_path, timeout=800
    )
    for got in ranks:
        worst = max(abs(a - b) / abs(a) for a, b in zip(ref, got))
        assert worst <= RTOL, (ref, got)
    fresh = plait.parallelize(own_model.TinyDecoder, {}, seed=1)  # other init: overwritten
    assert plait.load_checkpoint(tmp_path / "ckpt", fresh.model) == own_loop.STEPS
    want = par.model.state_dict()
    for k, v in fresh.model.state_dict().items():
        torch.testing.assert_close(v, want[k], rtol=1e-4, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")


# ---------------------------------------------------------------- objects instead of names


def test_data_object_and_optimizer_factory_replace_the_named_ones(tmp_path):
    """An optimizer factory and a data source give exactly the run their names give."""
    from plait.data.synthetic import SyntheticTokens

    base = [*own_model.CONFIG, "parallel.pp_microbatches=4", "train.steps=3"]
    named = plait.train(
        None, [*base, "optim.name=sgd", "optim.lr=0.1", f"log.run_dir={tmp_path / 'a'}"],
        model=own_model.TinyDecoder,
    )  # fmt: skip
    objects = plait.train(
        None, [*base, "data.name=stdlib_text", f"log.run_dir={tmp_path / 'b'}"],
        model=own_model.TinyDecoder(),  # an instance works too (copied)
        data=SyntheticTokens(0, 256, 16),
        optimizer=lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9),
    )  # fmt: skip
    a, b = [m["loss"] for m in named.metrics], [m["loss"] for m in objects.metrics]
    assert a == b and a[0] != a[-1]


def test_default_init_is_each_modules_reset_parameters_seeded_by_its_name():
    from plait.models.base import name_seed

    par = plait.parallelize(own_model.TinyDecoder, {}, seed=3)
    torch.manual_seed(name_seed(3, "layers.1.attn.q"))
    want = nn.Linear(32, 32, bias=False).weight
    torch.testing.assert_close(par.model.layers["1"].attn.q.weight, want, rtol=0, atol=0)
    torch.manual_seed(name_seed(3, "embed"))
    torch.testing.assert_close(par.model.embed.weight, nn.Embedding(256, 32).weight, rtol=0, atol=0)
    assert torch.equal(par.model.norm.weight, torch.ones(32))
