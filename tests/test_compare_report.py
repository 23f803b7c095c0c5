"""plait compare (N runs, eval loss, other metrics, tokens axis, smoothing) and plait report
write their PNGs; a metric no run logged is a one-line error. Run folders are written by hand
(metrics.jsonl + config.yaml, as plait train writes them): plotting needs no training."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from plait.cli import main
from plait.compare import ema, loss_table


def fake_run(path, scale: float, mfu: bool = True):
    path.mkdir(parents=True)
    cfg = {"model": {"name": "gpt"}, "data": {"seq_len": 32}, "train": {"global_batch": 8}}
    (path / "config.yaml").write_text(yaml.safe_dump(cfg))
    with open(path / "metrics.jsonl", "w") as f:
        for s in range(2, 41, 2):
            rec = {"step": s, "loss": scale * 5 * math.exp(-s / 20) + 0.05 * (s % 3),
                   "lr": 1e-3 * min(1, s / 10), "tokens_per_s": 1000 + 10 * s,
                   "mem_rss_gib": 0.5 + s / 1000, "peak_mem_bytes": 2**29}  # fmt: skip
            if mfu:
                rec["mfu"] = 0.3 + s / 1000
            if s % 20 == 0:
                rec["eval_loss"] = scale * 5 * math.exp(-s / 20) + 0.1
            f.write(json.dumps(rec) + "\n")
    return path


def test_compare_three_runs_and_report_write_pngs(tmp_path, capsys):
    runs = [str(fake_run(tmp_path / f"run{i}", 1 + i / 10, mfu=i != 2)) for i in range(3)]
    rows, max_rel = loss_table(runs)
    assert len(rows) == 20 and max_rel == pytest.approx(0.2, rel=0.05)
    png = tmp_path / "cmp.png"
    assert main(["compare", *runs, "--png", str(png), "--metric", "tokens_per_s",
                 "--x", "tokens", "--smooth", "0.6"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "max relative difference over 20 shared steps" in out and png.stat().st_size > 10_000
    rep = tmp_path / "report.png"
    assert main(["report", runs[0], "--png", str(rep)]) == 0
    assert "mfu" in capsys.readouterr().out and rep.stat().st_size > 10_000


def test_compare_names_a_metric_no_run_logged(tmp_path, capsys):
    runs = [str(fake_run(tmp_path / f"r{i}", 1)) for i in range(2)]
    assert main(["compare", *runs, "--png", str(tmp_path / "x.png"), "--metric", "mfy"]) == 2
    err = capsys.readouterr().err
    assert "--metric: no run logged 'mfy' (did you mean 'mfu'?)" in err and "\n" == err[-1]
    assert main(["compare", runs[0]]) == 2


def test_ema_is_debiased_and_follows_a_constant():
    assert ema([2.0, 2.0, 2.0], 0.9) == pytest.approx([2.0, 2.0, 2.0])
    assert ema([0.0, 1.0], 0.0) == [0.0, 1.0]
