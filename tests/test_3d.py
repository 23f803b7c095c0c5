"""3-D parallelism against one process (docs/design.md promise 1): pipeline stages, each tensor-
parallel and FSDP2-sharded, on 8 real gloo ranks (pp=2 x dp_shard=2 x tp=2), under several
schedules with and without sequence parallel, accumulation and ZeRO-2/3 (ZeRO-3 is refused with
the zero-bubble schedules: plait.pipeline.validate); plus pipeline x HSDP.
Losses match per step within relative 1e-5 (helpers.RTOL), final full weights and held-out loss
too. The 3-D checkpoints also load under one process, and a one-process checkpoint under 3-D
(promise 2), training on along the straight run. A Hugging Face Llama runs 3-D too."""

from __future__ import annotations

import pytest

from helpers import (
    assert_resumed,
    assert_same_run,
    assert_same_run_and_eval,
    run_distributed_many,
    run_single,
    step3_checkpoint,
)

GPT = ["model.n_layers=4", "data.name=synthetic", "data.seq_len=16", "train.global_batch=8",
       "train.steps=6", "train.eval_batches=1", "optim.warmup_steps=2", "train.grad_clip=1.0",
       "checkpoint.every=3", "checkpoint.keep=5"]  # fmt: skip
THREE_D = ["parallel.pp=2", "parallel.dp_shard=2", "parallel.tp=2"]


def pp(schedule: str, m: int, v: int = 1) -> list[str]:
    return [f"parallel.pp_schedule={schedule}", f"parallel.pp_microbatches={m}",
            f"parallel.pp_virtual_stages={v}"]  # fmt: skip


LAYOUTS = {
    "3d 1F1B zero3": THREE_D + pp("1F1B", 4) + ["parallel.zero_stage=3"],
    "3d Interleaved1F1B zero2 sp": THREE_D + pp("Interleaved1F1B", 4, 2)
    + ["parallel.zero_stage=2", "parallel.sequence_parallel=true"],
    "3d ZBVZeroBubble zero2 sp accum": THREE_D + pp("ZBVZeroBubble", 2, 2)
    + ["parallel.zero_stage=2", "parallel.sequence_parallel=true", "train.grad_accum=2"],
    "pp2 x hsdp 2x2": ["parallel.pp=2", "parallel.dp_replicate=2", "parallel.dp_shard=2",
                       "parallel.zero_stage=3"] + pp("GPipe", 2),
}  # fmt: skip


# a Transformers Llama through plait's HF adapter (plait.models.hf), 3-D with sequence parallel
HF_LLAMA = ["model.name=hf", "model.hf_arch=LlamaForCausalLM", "model.hf_overrides.hidden_size=64",
            "model.hf_overrides.intermediate_size=128", "model.hf_overrides.num_hidden_layers=2",
            "model.hf_overrides.num_attention_heads=4", "model.hf_overrides.num_key_value_heads=2",
            "model.hf_overrides.vocab_size=256", "model.hf_overrides.max_position_embeddings=64",
            "data.name=synthetic", "data.seq_len=16", "train.global_batch=8", "train.steps=5",
            "train.eval_batches=1", "optim.warmup_steps=2", "train.grad_clip=1.0"]  # fmt: skip
HF_3D = THREE_D + pp("1F1B", 2) + ["parallel.zero_stage=3", "parallel.sequence_parallel=true"]


@pytest.mark.timeout(600)
def test_3d_matches_one_process_and_checkpoints_cross_layouts(tmp_path):
    straight = run_single(GPT, tmp_path / "one")
    from_one = step3_checkpoint(straight.run_dir, tmp_path / "one_to_3d")
    cfgs = {name: GPT + extra for name, extra in LAYOUTS.items()}
    cfgs["1 -> 3d"] = GPT + LAYOUTS["3d 1F1B zero3"] + [f"checkpoint.dir={from_one}"]
    cfgs["hf llama 3d"] = HF_LLAMA + HF_3D
    results = run_distributed_many(list(cfgs.values()), 8, tmp_path / "eight", timeout=560)
    for name, got in zip(cfgs, results):
        if name == "1 -> 3d":
            assert_resumed(straight, got, name)
            continue
        if name == "hf llama 3d":
            assert_same_run(run_single(HF_LLAMA, tmp_path / "hf_one"), got)
            continue
        assert_same_run_and_eval(straight, got, name)
    # the 3-D checkpoint (8 ranks, DTensors on a 3-D mesh) -> one process
    to_one = step3_checkpoint(results[0].run_dir, tmp_path / "3d_to_one")
    got = run_single(GPT + [f"checkpoint.dir={to_one}"], tmp_path / "3d_to_one_run")
    assert_resumed(straight, got, "3d -> 1")
