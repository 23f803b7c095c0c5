"""Context parallel (docs/design.md, context parallel): Llama 3's all-gather attention over real
gloo ranks, each layout against one process (fp32: relative 1e-5 per step, final weights). Two
launches hold every multi-rank config: one on 2 ranks (gpt cp=2 saving a checkpoint, gpt cp=2
resumed from a one-process checkpoint, Hugging Face Llama and Mistral at cp=2) and one on 4
ranks (cp=4 with activation checkpointing, cp=2 x tp=2 with sequence parallel, cp=2 x
dp_shard=2 with op-level checkpointing, cp=2 x pp=2, cp=2 x dp_replicate=2). The 2-rank launch
also measures bench/cp_comm.py's bytes per layer."""

from __future__ import annotations

import pytest
import torch
from cp_ranks import cp_comm

from helpers import (
    assert_resumed,
    assert_same_run,
    assert_same_run_and_eval,
    make_config,
    run_in_ranks,
    run_single,
    step3_checkpoint,
)
from plait.config import load_config
from plait.context_parallel.shard import cp_positions, shard_batch
from plait.errors import ConfigError
from plait.plan import Job, Layout, ModelShape, make_cluster, plan_memory, search, step_time
from plait.plan.memory import block_activation_bytes, cp_kv_gather_bytes
from plait.plan.steptime import COLL_EFF
from plait.preflight import validate

GPT = ["data.seq_len=16", "model.n_layers=2", "model.n_kv_heads=2", "train.global_batch=4",
       "train.steps=3"]  # fmt: skip
SIX = ["train.steps=6", "optim.warmup_steps=2", "checkpoint.every=3", "checkpoint.keep=5"]
CP2 = ["parallel.cp=2", "parallel.dp_shard=1"]
HF = ["model.name=hf", "data.name=synthetic", "data.seq_len=16", "train.global_batch=4",
      "train.steps=3", "train.eval_batches=1"]  # fmt: skip
HF_SHAPE = ["model.hf_overrides.hidden_size=64", "model.hf_overrides.intermediate_size=128",
            "model.hf_overrides.num_hidden_layers=2", "model.hf_overrides.num_attention_heads=4",
            "model.hf_overrides.num_key_value_heads=2", "model.hf_overrides.vocab_size=256",
            "model.hf_overrides.max_position_embeddings=64"]  # fmt: skip
LLAMA = HF + ["model.hf_arch=LlamaForCausalLM"] + HF_SHAPE
# a window shorter than the sequence: the mask is not plain causal, also across cp chunks
MISTRAL = (
    HF + ["model.hf_arch=MistralForCausalLM", "model.hf_overrides.sliding_window=6"] + HF_SHAPE
)


def _cfgs(tmp_path, variants: dict[str, list[str]]) -> list[dict]:
    return [make_config(v, tmp_path / k).to_dict() for k, v in variants.items()]


# ---- before any process group


def _refusal(overrides: list[str], world: int) -> str:
    with pytest.raises(ConfigError) as e:
        validate(load_config(None, overrides), world)
    return str(e.value)


def test_refusals_name_sizes_that_work():
    msg = _refusal(["data.seq_len=30", "parallel.cp=4"], 4)
    assert msg.startswith("data.seq_len: 30 does not split into 2 x parallel.cp=8 equal chunks")
    assert "use data.seq_len 24 or 32, or parallel.cp in [3, 5, 15]" in msg
    msg = _refusal(["parallel.cp=2", "parallel.zero_stage=1"], 2)
    assert "parallel.cp=2 with dp_engine='torch' zero_stage=1 is not allowed" in msg
    msg = _refusal(["model.name=seed_mlp", "data.name=synthetic", "parallel.cp=2"], 2)
    assert "parallel.cp: 2 is not allowed for model.name=seed_mlp" in msg
    msg = _refusal(["parallel.cp=3"], 4)
    assert "cp=3" in msg and "does not divide the world size 4" in msg
    # sequence parallel splits this rank's T / cp over tp
    sp = ["data.seq_len=12", "parallel.cp=2", "parallel.tp=4", "parallel.sequence_parallel=true"]
    msg = _refusal(sp + ["parallel.zero_stage=2"], 8)
    assert "data.seq_len / parallel.cp: 6 does not split over parallel.tp=4" in msg


def test_shards_cover_the_sequence_once_with_balanced_causal_work():
    T, tokens = 16, torch.arange(16)[None]
    for cp in (2, 4):
        parts = [shard_batch({"input": tokens}, r, cp)["input"][0] for r in range(cp)]
        assert sorted(torch.cat(parts).tolist()) == list(range(T))
        for r, part in enumerate(parts):
            assert part.tolist() == cp_positions(T // cp, r, cp).tolist()
        # keys each rank's queries see under the causal mask: equal on every rank
        work = {int((cp_positions(T // cp, r, cp) + 1).sum()) for r in range(cp)}
        assert len(work) == 1, work


def test_planner_prices_cp_by_hand():
    small = ModelShape(dim=256, n_layers=8, n_heads=8, n_kv_heads=4, ffn_dim=688, vocab_size=256)
    job = Job(global_batch=4, seq_len=256, dtype="fp32")
    # per local token: keys and values gathered over cp (2 D cp), plus the (T/cp, T) bool mask
    per_token = (6 * 256 + 2 * 256 + 2 * 256 * 2 + 4 * 688) * 4 + (8 + 2) * 4
    got = block_activation_bytes(small, 512, job, cp=2)
    assert got == 512 * per_token + 128 * 256
    # kv all-gather + reduce-scatter per layer: 2 (cp-1)/cp x B T 2 K E elements, fp32
    assert cp_kv_gather_bytes(small, job, 4, 1, 4) == 2 * 3 / 4 * 4 * 256 * 2 * 128 * 4
    # activations per rank shrink with cp (not as far as dp's: keys and values are gathered);
    # FSDP2 shards states over dp_shard x cp; the step pays the kv collectives (NVLink at
    # the planner's achieved share of bus bandwidth)
    cl = make_cluster("h100", 4)
    dp4, cp4 = Layout(dp_shard=4, zero_stage=3), Layout(dp_shard=1, cp=4, zero_stage=3)
    m1, m_dp, m_cp = (plan_memory(small, lay, job, 80 * 2**30) for lay in (Layout(), dp4, cp4))
    assert m_cp.params == m_dp.params == m1.params / 4
    assert m_dp.activations < m_cp.activations < m1.activations / 2
    t4 = step_time(small, cp4, job, cl, efficiency=0.5)
    kv = 4 * 256 * 2 * 128 * 4  # the 4 sequences' gathered keys + values (dp=1), bytes
    assert t4.cp_s == pytest.approx(8 * 2 * (3 * 3e-6 + 3 / 4 * kv / (450e9 * COLL_EFF)))
    assert Layout.from_config(load_config(None, ["parallel.cp=2"]), 4).short() == (
        "dp 1x2 tp 1 pp 1 cp 2"
    )
    # the search keeps cp and skips lengths that do not split
    assert all(c.layout.cp == 4 for c in search(small, job, cl, cp4)[0])
    assert search(small, Job(4, 100, "fp32"), cl, Layout(cp=4))[1] == 0


# ---- real gloo processes


@pytest.mark.timeout(480)
def test_two_ranks_gpt_hf_and_reshard(tmp_path):
    straight = run_single(GPT + SIX, tmp_path / "straight")
    from_one = step3_checkpoint(straight.run_dir, tmp_path / "one_to_cp2")
    variants = {
        "cp2": GPT + SIX + CP2,
        "one_to_cp2": GPT + SIX + CP2 + [f"checkpoint.dir={from_one}"],
        "llama": LLAMA + CP2,
        "mistral": MISTRAL + CP2,
    }
    res = run_in_ranks(
        "cp_ranks:two_rank_suite", (_cfgs(tmp_path, variants),), 2, tmp_path, timeout=420
    )[0]
    # bench/cp_comm.py's figures at a small size: the keys' and values' all-gather + reduce-
    # scatter per layer moves exactly the analytic bytes; saved activations are the planner's
    wire, saved = res["per_layer"]
    want_wire, want_saved = cp_comm().analytic(2, batch=2, seq_len=32)
    assert wire == pytest.approx(want_wire, rel=1e-9), (wire, want_wire)
    assert saved == pytest.approx(want_saved, rel=0.05), (saved, want_saved)

    cp2, one_to_cp2, llama, mistral = res["runs"]
    assert_same_run_and_eval(straight, cp2, "cp=2")
    assert_resumed(straight, one_to_cp2, "one process -> cp=2")
    ck = step3_checkpoint(cp2.run_dir, tmp_path / "cp2_to_one")
    back = run_single(GPT + SIX + [f"checkpoint.dir={ck}"], tmp_path / "cp2_to_one_run")
    assert_resumed(straight, back, "cp=2 -> one process")
    assert_same_run(run_single(LLAMA, tmp_path / "llama_one"), llama)
    assert_same_run(run_single(MISTRAL, tmp_path / "mistral_one"), mistral)


@pytest.mark.timeout(480)
def test_four_ranks_cp4_and_cp_with_tp_dp_pp(tmp_path):
    variants = {
        # with activation checkpointing: recompute gathers keys and values again
        "cp4": GPT + ["parallel.cp=4", "parallel.dp_shard=1", "parallel.zero_stage=3",
                      "parallel.activation_checkpoint=full"],
        "cp2_tp2_sp": GPT + CP2 + ["parallel.tp=2", "parallel.sequence_parallel=true",
                                   "parallel.zero_stage=2"],
        # op-level checkpointing: backward gathers keys and values again
        "cp2_dp_shard2": GPT + ["parallel.cp=2", "parallel.dp_shard=2", "parallel.zero_stage=2",
                                "parallel.activation_checkpoint=op"],
        "cp2_pp2": GPT + CP2 + ["parallel.pp=2", "parallel.pp_microbatches=2"],
        "cp2_hsdp": GPT + CP2 + ["parallel.dp_replicate=2", "parallel.zero_stage=2"],
    }  # fmt: skip
    runs = run_in_ranks(
        "helpers:train_configs", (_cfgs(tmp_path, variants),), 4, tmp_path, timeout=420
    )[0]
    ref = run_single(GPT, tmp_path / "one")
    assert ref.final_eval
    for name, got in zip(variants, runs):
        assert_same_run_and_eval(ref, got, name)
        # the global gradient norm combines shards over dp_shard x cp (and tp, pp) exactly
        norms = [(a["grad_norm"], b["grad_norm"]) for a, b in zip(ref.metrics, got.metrics)]
        assert all(abs(x - y) <= 1e-5 * x for x, y in norms), (name, norms)
