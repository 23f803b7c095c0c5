"""The model and data tables (plait/registry.py): a model and a data source written outside the
package, registered through the tables alone, train under dp_shard=2 and pp=2 like one process;
the generic code (config checks, pipeline balance, planner) reads the model interface."""

from __future__ import annotations

import os
import textwrap

import pytest

from helpers import assert_same_run, losses, run_distributed_many, run_single
from plait.config import load_config
from plait.errors import ConfigError
from plait.models import build_model
from plait.pipeline.split import block_costs
from plait.plan import ModelShape

# A user's module: nothing in it but plait's public pieces and two registry decorators.
PLUGIN = textwrap.dedent('''
    """A residual tanh MLP and a seeded "quadrants" task, registered from outside plait."""
    import torch
    from torch import nn

    from plait.data.base import StepData, generator
    from plait.models.base import PlaitModel
    from plait.registry import register_data, register_model


    class Residual(nn.Module):
        def __init__(self, width):
            super().__init__()
            self.fc = nn.Linear(width, width)

        def forward(self, x):
            return x + torch.tanh(self.fc(x))


    class QuadNet(PlaitModel):
        task = "classification"

        def __init__(self, in_features=6, width=16, depth=4, classes=3):
            super().__init__()
            self.in_features, self.num_classes = in_features, classes
            self.embed = nn.Linear(in_features, width)
            self.layers = nn.ModuleDict({str(i): Residual(width) for i in range(depth)})
            self.head = nn.Linear(width, classes)

        def pre_modules(self):
            return ["embed"]

        def post_modules(self):
            return ["head"]

        def forward(self, x):  # a pipeline stage without embed / head gets / gives hidden states
            h = self.embed(x) if self.embed is not None else x
            for block in self.layers.values():
                h = block(h)
            return self.head(h) if self.head is not None else h


    class Quadrants(StepData):
        """Gaussian points; the class counts the positive ones among the first two coordinates."""

        def __init__(self, seed, width, classes):
            super().__init__(seed)
            self.width, self.classes = width, classes

        def sample(self, split, step, lo, hi, global_batch):
            g = generator(self.seed, f"quadrants-{split}-{step}")
            x = torch.randn(global_batch, self.width, generator=g)
            y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()  # 0, 1 or 2
            return {"input": x[lo:hi], "target": y[lo:hi]}


    @register_model("quad_net", task="classification")
    def build_quad_net(cfg):
        return QuadNet()


    @register_data("quadrants", tasks=("classification",))
    def build_quadrants(cfg, model):
        return Quadrants(cfg.train.seed, model.in_features, model.num_classes)
''')

MODULE = "plait_user_quadrants"  # unique: the tables are process-wide
TOY = [
    f"model.name={MODULE}:quad_net",
    f"data.name={MODULE}:quadrants",
    "train.steps=8",
    "train.global_batch=32",
    "optim.name=adam",
    "optim.lr=3e-2",
]


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """The module in a folder outside the package, importable here and in every rank."""
    folder = tmp_path / "user"
    folder.mkdir()
    (folder / f"{MODULE}.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(folder))
    path = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", str(folder) + (os.pathsep + path if path else ""))
    return folder


@pytest.mark.timeout(400)
def test_model_and_data_from_outside_train_like_one_process(plugin, tmp_path):
    ref = run_single(TOY, tmp_path / "one")
    assert losses(ref)[-1] < losses(ref)[0]  # it learns
    dp, pp = run_distributed_many(
        [
            TOY + ["parallel.dp_shard=2", "parallel.zero_stage=3"],
            TOY + ["parallel.pp=2", "parallel.dp_shard=1", "parallel.pp_microbatches=2"],
        ],
        2,
        tmp_path / "two",
        timeout=300,
    )
    assert_same_run(ref, dp)
    assert_same_run(ref, pp)


def test_names_are_checked_against_the_tables(plugin):
    cfg = load_config(None, TOY)
    assert type(build_model(cfg)).__name__ == "QuadNet"
    msg = str(pytest.raises(ConfigError, load_config, None, ["model.name=gtp"]).value)
    assert "model.name: 'gtp'" in msg and "did you mean 'gpt'" in msg and "seed_mlp" in msg
    msg = str(pytest.raises(ConfigError, load_config, None, ["data.name=no_such:quadrants"]).value)
    assert "no module 'no_such'" in msg and "PYTHONPATH" in msg
    msg = str(pytest.raises(ConfigError, load_config, None, [f"model.name={MODULE}:quad"]).value)
    assert "registered no 'quad'" in msg and "did you mean 'quad_net'" in msg
    # the model's task decides the data that fits, as for plait's own models
    msg = str(
        pytest.raises(ConfigError, load_config, None, [TOY[0], "data.name=stdlib_text"]).value
    )
    assert "data.name: 'stdlib_text'" in msg and "'quadrants'" in msg and "'digits'" in msg
    with pytest.raises(ConfigError, match="is not planned"):
        ModelShape.from_config(cfg)


def test_flops_come_from_the_model_for_hf_stages_too():
    # Llama through Transformers: each block's FLOPs include attention scores and values
    cfg = load_config(
        None,
        [
            "model.name=hf", "model.hf_arch=LlamaForCausalLM", "data.name=synthetic",
            "data.seq_len=16", "model.hf_overrides.hidden_size=64",
            "model.hf_overrides.intermediate_size=128", "model.hf_overrides.num_hidden_layers=2",
            "model.hf_overrides.num_attention_heads=4", "model.hf_overrides.num_key_value_heads=2",
            "model.hf_overrides.vocab_size=256",
        ],
    )  # fmt: skip
    blocks, pre, post = block_costs(build_model(cfg), "flops", 16)
    qkvo = 64 * 64 + 2 * 64 * 32 + 64 * 64  # 2 kv heads of 16
    assert blocks == [2.0 * (qkvo + 3 * 64 * 128) + 4.0 * 16 * 64] * 2
    assert pre == 0.0 and post == 2.0 * 64 * 256
    # the planner's counts are the model's own, equal to the Llama formula here
    shape = ModelShape.from_config(cfg)
    assert shape == ModelShape(64, 2, 4, 2, 128, 256)


@pytest.mark.timeout(300)
def test_an_installed_package_registers_a_model_by_entry_point(tmp_path):
    """A package installed at test time names its model module under the ``plait.models``
    entry-point group; ``model.name=ep_net`` then trains with nothing on the Python path."""
    import json
    import subprocess
    import sys

    pkg = tmp_path / "pkg"
    pkg.mkdir()
    module = PLUGIN.replace('"quad_net"', '"ep_net"').replace('"quadrants"', '"ep_quadrants"')
    (pkg / "plait_ep_toy.py").write_text(module)
    (pkg / "pyproject.toml").write_text(
        textwrap.dedent("""
        [build-system]
        requires = ["setuptools>=68"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "plait-ep-toy"
        version = "0.1"
        [tool.setuptools]
        py-modules = ["plait_ep_toy"]
        [project.entry-points."plait.models"]
        ep_net = "plait_ep_toy"
        [project.entry-points."plait.data"]
        ep_quadrants = "plait_ep_toy"
        """)
    )
    site = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation"]
    subprocess.run([*pip, "--target", str(site), str(pkg)], check=True, timeout=240)
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(site)}  # installed, as site-packages would hold it
    overrides = [o for o in TOY if not o.startswith(("model.name", "data.name"))]
    cmd = [sys.executable, "-c", "import sys; from plait.cli import main; sys.exit(main())",
           "train", "seed_mlp", "model.name=ep_net", "data.name=ep_quadrants", *overrides,
           "log.every=1", "log.wandb=off", "log.tensorboard=false", "log.progress=off",
           "--run-dir", str(run)]  # fmt: skip
    subprocess.run(cmd, check=True, timeout=240, env=env, cwd=tmp_path)
    got = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(got) == 8 and got[-1] < got[0], got
