"""Rank function of tests/test_plan_peak.py: train each config in the same ranks with the CPU
allocator's events recorded (plait.observe.live_bytes), and return every rank's live bytes at
the start of each step and the most live during it."""

from __future__ import annotations

import gc


def measure(cfg_dicts: list[dict]) -> list[dict]:
    from plait import dist as pdist
    from plait.config import from_dict
    from plait.observe.live_bytes import LiveBytes
    from plait.trainer import _Step, train

    run = _Step.run

    def spanned(self, step):
        with LiveBytes.span(f"plait step {step + 1}"):
            return run(self, step)

    _Step.run = spanned
    cfgs = [from_dict(d) for d in cfg_dicts]
    env = pdist.DistEnv.from_environ()
    device = pdist.pick_device(cfgs[0].train.device, env.local_rank)
    if env.world_size > 1:
        pdist.init_process_group(env, device, cfgs[0].parallel.timeout_s)
    out = []
    try:
        for cfg in cfgs:
            gc.collect()
            with LiveBytes() as live:
                res = train(cfg)
            steps = {n: live.peak(f"plait step {n}") for n in range(1, cfg.train.steps + 1)}
            out.append({"rank": env.rank, "steps": steps, "loss": [m["loss"] for m in res.metrics]})
    finally:
        _Step.run = run
        if env.world_size > 1:
            pdist.destroy_process_group()
    return out
