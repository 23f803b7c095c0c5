"""The model interface: deterministic per-name init, meta build, shapes, losses, presets."""

from __future__ import annotations

import torch

from plait.config import load_config
from plait.models import build_model, gpt_args, param_count
from plait.models.base import canonical_name


def cfg(*ov):
    return load_config(None, list(ov))


def materialise(c, device="meta"):
    m = build_model(c, device)
    if device == "meta":
        m.to_empty(device="cpu")
    m.init_weights(c.train.seed)
    return m


def test_init_on_meta_equals_init_on_cpu():
    for name in ("gpt", "seed_mlp", "seed_bigmodel"):
        c = cfg(f"model.name={name}", "data.name=synthetic")
        a, b = materialise(c), materialise(c, "cpu")
        for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(x, y), k
        assert all(not p.is_meta for p in a.parameters())


def test_init_depends_on_name_and_seed_only():
    # a parameter's value does not depend on which other parameters exist: a pipeline stage that
    # holds only some blocks gets the same values as the whole model
    c = cfg("model.n_layers=4")
    big = materialise(c)
    stage = build_model(c)
    del stage.layers["0"], stage.layers["1"]
    stage.tok_embeddings = None
    stage.to_empty(device="cpu")
    stage.init_weights(c.train.seed)
    for k, v in stage.state_dict().items():
        assert torch.equal(v, big.state_dict()[k]), k
    small = materialise(cfg("model.n_layers=2"))
    other = materialise(cfg("model.n_layers=2", "train.seed=1"))
    assert not torch.equal(
        small.layers["0"].attention.wq.weight, other.layers["0"].attention.wq.weight
    )
    # parameters are not all drawn alike: independent streams per name
    assert not torch.equal(
        small.layers["0"].attention.wq.weight, small.layers["1"].attention.wq.weight
    )


def test_canonical_name_strips_wrappers():
    assert (
        canonical_name("module.layers.0._checkpoint_wrapped_module.fc._orig_mod.weight")
        == "layers.0.fc.weight"
    )


def test_gpt_forward_shapes_and_causality():
    m = materialise(cfg("model.n_kv_heads=2"))  # grouped-query attention
    x = torch.randint(0, 256, (2, 16))
    y = m(x)
    assert y.shape == (2, 16, 256)
    x2 = x.clone()
    x2[:, 10:] = 0  # changing the future must not change the past
    torch.testing.assert_close(m(x2)[:, :10], y[:, :10])


def test_loss_is_summed():
    m = materialise(cfg("model.name=seed_mlp", "data.name=synthetic"))
    x, t = torch.randn(8, 784), torch.randint(0, 10, (8,))
    total = m.loss(m(x), {"target": t})
    mean = torch.nn.functional.cross_entropy(m(x), t)
    torch.testing.assert_close(total, mean * 8)
    assert m.count({"target": t}) == 8


def test_seed_models_match_the_seed_documents():
    mlp = build_model(cfg("model.name=seed_mlp", "data.name=synthetic"))
    assert [mlp.layers[k].fc.in_features for k in mlp.layers] == [784, 128, 64]
    big = build_model(cfg("model.name=seed_bigmodel", "data.name=synthetic"))
    assert [big.layers[k].fc.out_features for k in big.layers] == [10000, 1000, 10]
    assert param_count(big) == 1000 * 10000 + 10000 + 10000 * 1000 + 1000 + 1000 * 10 + 10


def test_presets_match_published_sizes():
    # Llama 3 8B / 70B have 8.03e9 / 70.6e9 parameters (arXiv 2407.21783); built on meta, no memory.
    for preset, expected in (("8b", 8.03e9), ("70b", 70.55e9)):
        n = param_count(build_model(cfg(f"model.preset={preset}")))
        assert abs(n - expected) / expected < 0.01, (preset, n)
    assert gpt_args(cfg("model.preset=1b")).n_kv_heads == 8


def test_dropout_and_batchnorm_knobs():
    m = materialise(
        cfg(
            "model.name=seed_mlp",
            "data.name=synthetic",
            "model.batchnorm=true",
            "model.dropout=0.5",
        )
    )
    assert m.layers["0"].bn is not None and m.layers["2"].bn is None
    m.train()
    x = torch.randn(16, 784)
    assert not torch.equal(m(x), m(x))  # dropout active in training
    m.eval()
    assert torch.equal(m(x), m(x))
