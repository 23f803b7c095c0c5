"""What a run reports about itself: interval throughput, MFU against the recorded peak, the
banner, profiler traces per rank, a straggler named, and the config checks of the log keys."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest

from helpers import make_config, run_in_ranks, run_single
from plait.config import load_config
from plait.errors import ConfigError
from plait.models import gpt_args, model_summary
from plait.observe.peaks import gpu_peak
from plait.observe.straggler import straggler_record
from plait.trainer import validate

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY = ["model.n_layers=2", "data.seq_len=32", "train.global_batch=8"]


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_gpt_run_reports_interval_throughput_mfu_banner_and_trace(tmp_path, capsys):
    # gpt_tiny.yaml warms up over 10 steps: a 5-step run clamps the warmup and trains
    over = TINY + ["train.steps=5", "log.every=2", "log.profile_steps=[2,3]"]
    res = run_single(over, tmp_path, config=f"{CONFIGS}/gpt_tiny.yaml")
    out = capsys.readouterr().out
    assert "plait | gpt_tiny | gpt" in out and "layout  pp 1 x dp_replicate 1" in out
    assert f"run     {tmp_path}" in out and "warmup clamped to 5 steps" in out
    lr = load_config(f"{CONFIGS}/gpt_tiny.yaml").optim.lr
    assert [m["lr"] for m in res.metrics] == pytest.approx([lr * k / 5 for k in range(1, 6)])
    assert res.metrics[-1]["loss"] < res.metrics[0]["loss"]
    assert "tokens/s" in out and "mfu" in out and "rss" in out and "eta" in out

    recs = _records(tmp_path)
    assert [r["step"] for r in recs] == [2, 4, 5]
    info = json.loads((tmp_path / "run.json").read_text())["observe"]
    cfg = make_config(over, tmp_path, f"{CONFIGS}/gpt_tiny.yaml")
    a = gpt_args(cfg)
    non_embed = model_summary(cfg)["params"] - a.vocab_size * a.dim
    assert info["flops_per_token"] == 6 * non_embed + 12 * a.n_layers * a.dim * 32
    by_step = {m["step"]: m for m in res.metrics}
    for r, steps in zip(recs, ([1, 2], [3, 4], [5])):
        window = [by_step[s] for s in steps]
        tokens = sum(m["tokens"] for m in window)
        assert tokens == len(steps) * 8 * 32
        assert r["tokens_per_s"] == pytest.approx(tokens / sum(m["step_time_s"] for m in window))
        assert r["tokens_per_s_per_device"] == r["tokens_per_s"]  # one device
        achieved = info["flops_per_token"] * r["tokens_per_s_per_device"]
        assert r["tflops_per_device"] == pytest.approx(achieved / 1e12)
        assert r["mfu"] == pytest.approx(achieved / info["peak_flops"])
        parts = sum(r[k] for k in ("data_s", "wait_s", "fwd_bwd_s", "optim_s"))
        assert 0 < parts <= r["step_time_avg_s"] * (1 + 1e-9)
        assert r["mem_rss_gib"] > 0 and r["eta_s"] >= 0
    assert recs[-1]["eta_s"] == 0
    trace = json.loads((tmp_path / "profile" / "rank0.pt.trace.json").read_text())
    names = {e.get("name", "") for e in trace["traceEvents"]}
    steps = {n for n in names if n.startswith("plait step")}
    assert steps == {"plait step 2", "plait step 3"}, steps


def slow_rank_run(cfg_dict: dict, slow_rank: int, delay_s: float) -> dict:
    """Rank function: ``slow_rank`` waits for its data every step (the loader's hand-over: the
    read itself runs ahead in the prefetch thread)."""
    from plait import dist as pdist
    from plait.config import from_dict
    from plait.trainer import _Step, train

    env = pdist.DistEnv.from_environ()
    if env.rank == slow_rank:
        init = _Step.__init__

        def slow_init(self, *a, **k):
            init(self, *a, **k)
            get = self.loader.get
            self.loader.get = lambda *a, **k: (time.sleep(delay_s), get(*a, **k))[1]

        _Step.__init__ = slow_init
    return train(from_dict(cfg_dict)).metrics


def test_two_ranks_write_a_trace_each_and_name_the_slow_rank(tmp_path):
    cfg = make_config(
        TINY + ["train.steps=4", "log.every=2", "log.profile_steps=[3,4]", "parallel.dp_shard=2"],
        tmp_path / "run",
    )
    validate(cfg, 2)
    per_rank = run_in_ranks(
        "test_observe:slow_rank_run", (cfg.to_dict(), 1, 1.0), 2, tmp_path, timeout=240
    )
    logged = [m for m in per_rank[0] if m["step"] in (2, 4)]
    assert all(m["straggler_rank"] == 1 and m["slowest_rank"] == 1 for m in logged), logged
    assert all(m["busy_max_s"] >= 1.0 for m in logged)
    assert all(m["tokens_per_s_per_device"] == m["tokens_per_s"] / 2 for m in logged)
    for r in (0, 1):
        trace = json.loads((tmp_path / "run" / "profile" / f"rank{r}.pt.trace.json").read_text())
        assert trace["traceEvents"]


def test_straggler_needs_the_factor_over_the_other_ranks():
    assert "straggler_rank" not in straggler_record([1.0, 1.2, 1.1], 1.5)
    rec = straggler_record([1.0, 1.0, 2.0, 1.1], 1.5)
    assert rec["straggler_rank"] == 2 and rec["busy_max_s"] == 2.0
    assert "straggler_rank" not in straggler_record([1.0, 3.0], 0.0)  # 0: off


@pytest.mark.parametrize(
    "name,tflops",
    [
        ("NVIDIA H100 80GB HBM3", 989.4),
        ("NVIDIA H100 PCIe", 756),
        ("NVIDIA H100 NVL", 835),
        ("NVIDIA H200", 989.4),
        ("NVIDIA A100-SXM4-80GB", 312),
        ("NVIDIA B200", 2250),
        ("NVIDIA L40S", 362.05),
        ("AMD Instinct MI300X", 1307.4),
    ],
)
def test_gpu_peak_table(name, tflops):
    peak = gpu_peak(name)
    assert math.isclose(peak.flops, tflops * 1e12) and peak.source
    assert gpu_peak("NVIDIA GeForce GTX 1080") is None


@pytest.mark.parametrize(
    "over,msg",
    [
        (["log.memory_snapshot=2", "train.device=cpu"], "CUDA memory snapshots need a CUDA"),
        (["log.profile_steps=[3,9]", "train.steps=5"], "log.profile_steps: [3, 9]"),
        (["log.profile_steps=[2]"], "log.profile_steps: [2]"),
        (["log.straggler_factor=0.5"], "log.straggler_factor: 0.5"),
    ],
)
def test_log_keys_are_checked_before_the_run(tmp_path, over, msg):
    with pytest.raises(ConfigError, match=None) as e:
        validate(make_config(over, tmp_path), 1)
    assert msg in str(e.value) and "\n" not in str(e.value)
