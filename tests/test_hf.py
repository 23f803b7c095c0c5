"""Hugging Face Transformers models under plait (model.name=hf), against Transformers itself
and against one process: a tiny random Llama, Mistral (sliding window shorter than the
sequence) and GPT-2 give Transformers' logits; dp_shard=2 (ZeRO-3), tp=2 and pp=2 match one
process (relative 1e-5 per step, helpers.RTOL); a run trained under tp=2 exports to a
save_pretrained folder that AutoModelForCausalLM loads with the same logits; pretrained
weights load under any layout; an architecture without a plan trains under data parallel and
refuses tp / pp before any process group. Nothing is downloaded (HF_HUB_OFFLINE=1, conftest).

All 2-rank configs run in ONE launch (helpers.run_in_ranks; start-up costs ~10 s)."""

from __future__ import annotations

import os

import pytest
import torch

from helpers import assert_same_run, make_config, run_in_ranks, run_single
from plait.config import load_config
from plait.errors import ConfigError
from plait.models import build_model
from plait.trainer import validate

os.environ["HF_HUB_OFFLINE"] = "1"

RUN = [
    "model.name=hf",
    "data.name=synthetic",
    "data.seq_len=16",
    "train.global_batch=8",
    "train.steps=5",
    "train.eval_batches=1",
    "optim.warmup_steps=2",
    "train.grad_clip=1.0",
]


def hf(arch: str, **fields) -> list[str]:
    return [f"model.hf_arch={arch}"] + [f"model.hf_overrides.{k}={v}" for k, v in fields.items()]


LLAMA = RUN + hf(
    "LlamaForCausalLM", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, vocab_size=256, max_position_embeddings=64,
)  # fmt: skip
MISTRAL = RUN + hf(
    "MistralForCausalLM", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, vocab_size=256, max_position_embeddings=64,
    sliding_window=8,  # shorter than data.seq_len: the mask is not plain causal
)  # fmt: skip
GPT2 = RUN + hf(
    "GPT2LMHeadModel", n_embd=64, n_layer=2, n_head=4, vocab_size=256, n_positions=64,
    embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0,  # dropout: see plait.tensor_parallel
)  # fmt: skip
NEOX = RUN + hf(  # no plait plan: one block, data parallel only
    "GPTNeoXForCausalLM", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    num_attention_heads=4, vocab_size=256, max_position_embeddings=64,
)  # fmt: skip
DP = ["parallel.dp_shard=2", "parallel.zero_stage=3"]
TP = ["parallel.tp=2", "parallel.dp_shard=1"]
PP = ["parallel.pp=2", "parallel.pp_schedule=1F1B", "parallel.pp_microbatches=4"]


def plait_model(overrides: list[str], state: dict | None = None):
    """The single-process plait model: initialised by name, or holding ``state``."""
    model = build_model(load_config(None, overrides))
    model.to_empty(device="cpu")
    model.init_weights(0)
    if state is not None:
        model.load_state_dict(state)
    return model.eval()


def tokens(vocab: int = 256, B: int = 2, T: int = 16) -> torch.Tensor:
    return torch.randint(0, vocab, (B, T), generator=torch.Generator().manual_seed(1))


# ---- one process, no process group


@pytest.mark.parametrize(
    "overrides", [LLAMA, MISTRAL, GPT2, NEOX], ids=["llama", "mistral", "gpt2", "neox"]
)
def test_one_process_logits_equal_transformers(overrides):
    model = plait_model(overrides)
    ref = model.hf_cls(model.hf_config).eval()  # plain Transformers, same config
    ref.load_state_dict(model.to_hf(model.state_dict()), strict=True)
    x = tokens()
    with torch.no_grad():
        got, want = model(x), ref(input_ids=x).logits
    assert got.shape == want.shape == (2, 16, 256)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_init_is_hf_like_and_head_starts_tied():
    model = plait_model(GPT2)
    std = model.hf_config.initializer_range
    assert abs(model.wte.weight.std().item() - std) < 2e-3
    assert torch.equal(model.lm_head.weight, model.wte.weight)  # same draw, own parameter
    assert model.lm_head.weight is not model.wte.weight
    assert torch.all(model.layers["0"].ln_1.weight == 1)
    assert torch.all(model.layers["0"].attn.q_proj.bias == 0)


PRETRAINED = RUN + ["optim.lr=1e-3"]  # arch and sizes from the folder's config.json


def save_pretrained_folder(folder, overrides: list[str] = GPT2):
    """A random model saved by Transformers itself (GPT-2: tied, as the Hub's checkpoints are)."""
    src = plait_model(overrides + ["train.seed=7"])
    ref = src.hf_cls(src.hf_config)
    ref.load_state_dict(src.to_hf(src.state_dict()), strict=False)
    ref.save_pretrained(folder)
    return folder


def test_pretrained_folder_loads_and_matches(tmp_path):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    for name, overrides in (("llama", LLAMA), ("gpt2", GPT2)):
        save_pretrained_folder(tmp_path / name, overrides)
        if name == "gpt2":
            with safe_open(str(tmp_path / name / "model.safetensors"), "pt") as f:
                assert "lm_head.weight" not in f.keys()  # tied: the head is read from wte
        model = plait_model([*PRETRAINED, f"model.hf_pretrained={tmp_path / name}"])
        loaded = AutoModelForCausalLM.from_pretrained(tmp_path / name).eval()
        wrong = [
            *PRETRAINED,
            f"model.hf_pretrained={tmp_path / name}",
            "model.hf_overrides.vocab_size=128",
        ]
        assert "in the configured model" in _refusal(wrong)  # before any process group
        x = tokens()
        with torch.no_grad():
            torch.testing.assert_close(model(x), loaded(input_ids=x).logits, rtol=0, atol=1e-6)


# ---- config mistakes, before any process group


def _refusal(overrides: list[str], world: int = 1) -> str:
    with pytest.raises(ConfigError) as e:
        validate(load_config(None, overrides), world)
    return str(e.value)


def test_unknown_architecture_refuses_tp_and_pp_naming_supported_ones():
    for layout in (TP, ["parallel.pp=2"]):
        msg = _refusal(NEOX + layout, 2)
        assert "GPTNeoXForCausalLM" in msg
        assert "LlamaForCausalLM, MistralForCausalLM, GPT2LMHeadModel" in msg
    validate(load_config(None, NEOX + DP), 2)  # data parallel is fine


def test_config_mistakes_name_the_key(tmp_path):
    msg = _refusal(RUN + ["model.hf_arch=LlamaForCausalLMM"])
    assert "model.hf_arch: 'LlamaForCausalLMM'" in msg and "did you mean 'LlamaForCausalLM'" in msg
    assert "model.hf_arch" in _refusal(RUN + ["model.hf_arch=BertModel"])
    msg = _refusal(RUN + [f"model.hf_config={tmp_path / 'nope.json'}"])
    assert "model.hf_config" in msg and "nope.json" in msg
    msg = _refusal(RUN + [f"model.hf_pretrained={tmp_path / 'nope'}"])
    assert "model.hf_pretrained" in msg
    assert "model.hf_arch: not set" in _refusal(RUN)
    msg = _refusal(LLAMA + ["model.hf_overrides.hiden_size=8"])
    assert "model.hf_overrides.hiden_size" in msg and "hidden_size" in msg
    assert "model.hf_overrides.num_attention_heads: 4" in _refusal(LLAMA + ["parallel.tp=8"], 8)
    assert "model.n_layers" in _refusal(LLAMA + ["model.n_layers=2"])
    small = ["data.name=stdlib_text", "model.hf_overrides.vocab_size=100"]
    assert "model.hf_overrides.vocab_size: 100" in _refusal(LLAMA + small)
    assert "sequence_parallel" in _refusal(GPT2 + TP + ["parallel.sequence_parallel=true"], 2)


# ---- real gloo processes


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Every 2-rank config in one launch; returns {name: (overrides, RunResult)}."""
    tmp = tmp_path_factory.mktemp("hf2")
    save_pretrained_folder(tmp / "gpt2_pretrained")
    variants = {
        "llama dp_shard=2": LLAMA + DP,
        "llama tp=2": LLAMA + TP + [f"checkpoint.dir={tmp / 'ckpt_llama'}"],  # exported below
        "llama tp=2 sp": LLAMA + TP + ["parallel.sequence_parallel=true"],
        "llama pp=2": LLAMA + PP,
        "mistral tp=2": MISTRAL + TP,
        "gpt2 dp_shard=2": GPT2 + DP,
        "gpt2 tp=2": GPT2 + TP,
        "gpt2 pp=2": GPT2 + PP + [f"checkpoint.dir={tmp / 'ckpt_gpt2'}"],  # exported below
        # a tied save_pretrained checkpoint (no lm_head tensor) read shard by shard
        "gpt2pre tp=2": PRETRAINED + [f"model.hf_pretrained={tmp / 'gpt2_pretrained'}"] + TP,
        "gpt2pre pp=2": PRETRAINED + [f"model.hf_pretrained={tmp / 'gpt2_pretrained'}"] + PP,
        "neox dp_shard=2": NEOX + DP,
    }
    dicts = [make_config(v, tmp / f"run{i}").to_dict() for i, v in enumerate(variants.values())]
    runs = run_in_ranks("helpers:train_configs", (dicts,), 2, tmp, timeout=420)[0]
    return {"tmp": tmp, **{k: (v, r) for (k, v), r in zip(variants.items(), runs)}}


@pytest.mark.timeout(600)
def test_two_rank_layouts_match_one_process(two_ranks, tmp_path):
    refs = {}
    pretrained = [*PRETRAINED, f"model.hf_pretrained={two_ranks['tmp'] / 'gpt2_pretrained'}"]
    for arch, base in (
        ("llama", LLAMA), ("mistral", MISTRAL), ("gpt2", GPT2), ("gpt2pre", pretrained),
        ("neox", NEOX),
    ):  # fmt: skip
        refs[arch] = run_single(base, tmp_path / arch)
    for name, value in two_ranks.items():
        if name == "tmp":
            continue
        _, got = value
        try:
            assert len(got.metrics) == 5
            assert_same_run(refs[name.split()[0]], got)  # relative 1e-5 per step
        except AssertionError as e:
            raise AssertionError(f"{name}: {e}") from None


@pytest.mark.timeout(300)
@pytest.mark.parametrize("run", ["llama tp=2", "gpt2 pp=2"])
def test_trained_run_exports_to_transformers_with_equal_logits(two_ranks, tmp_path, run):
    from transformers import AutoModelForCausalLM

    from plait.checkpoint import list_checkpoints
    from plait.cli import main

    overrides, result = two_ranks[run]
    last = list_checkpoints(two_ranks["tmp"] / f"ckpt_{run.split()[0]}")[-1]
    out = tmp_path / "hf"
    assert main(["export", str(last), str(out), "--format", "hf"]) == 0
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    trained = plait_model(overrides, result.state)  # the weights the 2-rank run ended with
    x = tokens()
    with torch.no_grad():
        want = trained(x)
        torch.testing.assert_close(loaded(input_ids=x).logits, want, rtol=0, atol=1e-6)
        # the export holds the trained weights, not the init
        assert not torch.allclose(plait_model(overrides)(x), want)
    if run.startswith("gpt2"):  # trained untied, exported untied
        assert not loaded.config.tie_word_embeddings
        assert not torch.equal(loaded.lm_head.weight, loaded.transformer.wte.weight)
