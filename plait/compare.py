"""``plait compare A B [C ...]``: runs' loss curves side by side (table: largest relative
difference from the first run), and optionally a PNG of training and eval loss, and any other
logged metric, against step or tokens, with smoothing."""

from __future__ import annotations

from pathlib import Path

import yaml

from plait.errors import PlaitError, did_you_mean
from plait.metrics import read_metrics

Runs = list[str | Path]


def loss_table(runs: Runs) -> tuple[list[tuple[int, list[float | None]]], float]:
    """Rows (step, loss of each run) over the union of steps, and the max |x - first| / |first|
    over the steps every run logged."""
    per = [{r["step"]: r["loss"] for r in read_metrics(d) if "loss" in r} for d in runs]
    steps = sorted(set().union(*per))
    rows = [(s, [p.get(s) for p in per]) for s in steps]
    shared = [v for _, v in rows if all(x is not None for x in v)]
    max_rel = max(
        (abs(x - v[0]) / max(abs(v[0]), 1e-12) for v in shared for x in v[1:]),
        default=float("nan"),
    )
    return rows, max_rel


def format_table(runs: Runs) -> str:
    rows, max_rel = loss_table(runs)
    w = max(*(len(str(d)) for d in runs), 10)

    def cell(v: float | None) -> str:
        return f"{v:>{w}.6f}" if v is not None else f"{'-':>{w}}"

    lines = [f"{'step':>6}  " + "  ".join(f"{str(d):>{w}}" for d in runs) + f"  {'rel diff':>10}"]
    for s, v in rows:
        rel = (
            f"{max(abs(x - v[0]) / max(abs(v[0]), 1e-12) for x in v[1:]):10.2e}"
            if all(x is not None for x in v)
            else f"{'-':>10}"
        )
        lines.append(f"{s:>6}  " + "  ".join(cell(x) for x in v) + f"  {rel}")
    n = sum(1 for _, v in rows if all(x is not None for x in v))
    lines.append(f"max relative difference over {n} shared steps: {max_rel:.3e}")
    return "\n".join(lines)


def units_per_step(run: str | Path) -> float:
    """Tokens (language models) or samples per optimizer step, from the run's config.yaml."""
    cfg = yaml.safe_load((Path(run) / "config.yaml").read_text())
    batch = cfg["train"]["global_batch"]
    return batch * (cfg["data"]["seq_len"] if cfg["model"]["name"] in ("gpt", "hf") else 1)


def series(records: list[dict], key: str, x: str, per_step: float = 1.0):
    """(xs, ys) of ``key`` over the records that have it; x is 'step' or 'tokens'."""
    pts = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    scale = per_step if x == "tokens" else 1.0
    return [s * scale for s, _ in pts], [v for _, v in pts]


def ema(ys: list[float], weight: float) -> list[float]:
    """TensorBoard's smoothing: y_t = w * y_(t-1) + (1 - w) * x_t, debiased at the start."""
    out, acc, norm = [], 0.0, 0.0
    for v in ys:
        acc, norm = weight * acc + (1 - weight) * v, weight * norm + (1 - weight)
        out.append(acc / norm if norm else v)
    return out


def pyplot():
    # deferred: matplotlib (heavy) only when a picture is asked for
    import matplotlib

    matplotlib.use("Agg")
    # deferred: matplotlib (heavy) only when a picture is asked for
    import matplotlib.pyplot as plt

    return plt


def plot(
    runs: Runs, png: str | Path, *, metrics: list[str] = (), x: str = "step", smooth: float = 0.0
) -> None:
    """One panel per metric (training loss, eval loss when logged, then ``metrics``); a line
    per run, smoothed (raw curve faint behind) when ``smooth`` > 0."""
    plt = pyplot()
    recs = [read_metrics(d) for d in runs]
    per = [units_per_step(d) if x == "tokens" else 1.0 for d in runs]
    keys = ["loss"] + (["eval_loss"] if any("eval_loss" in r for rs in recs for r in rs) else [])
    keys += [m for m in metrics if m not in keys]
    for m in metrics:
        if not any(series(rs, m, "step")[0] for rs in recs):
            logged = sorted({k for rs in recs for r in rs for k, v in r.items() if k != "step"})
            raise PlaitError(
                f"--metric: no run logged {m!r}{did_you_mean(m, logged)}; logged: {', '.join(logged)}"
            )
    _, max_rel = loss_table(runs)
    fig, axes = plt.subplots(1, len(keys), figsize=(6 * len(keys), 4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for i, (d, rs) in enumerate(zip(runs, recs)):
            xs, ys = series(rs, key, x, per[i])
            if not xs:
                continue
            color = f"C{i}"
            if smooth > 0 and key != "eval_loss":
                ax.plot(xs, ys, color=color, alpha=0.25, linewidth=1)
                ys = ema(ys, smooth)
            ax.plot(xs, ys, color=color, label=str(Path(d).name), marker="o" if len(xs) < 3 else "")
        ax.set_xlabel("tokens" if x == "tokens" else "step")
        ax.set_ylabel(key)
        smoothed = smooth > 0 and key != "eval_loss"
        ax.set_title(key.replace("_", " ") + (f" (smoothing {smooth})" if smoothed else ""))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(f"{len(runs)} runs; max relative loss difference from the first {max_rel:.2e}")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
