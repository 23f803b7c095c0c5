"""``plait report RUN --png F``: one run at a glance: loss (and eval loss), learning rate,
throughput, MFU, memory and step-time panels from its metrics.jsonl."""

from __future__ import annotations

from pathlib import Path

from plait.compare import pyplot, series
from plait.metrics import read_metrics

GiB = 1024**3

# (title, y label, [(metric, legend label, scale)])
PANELS = [
    ("loss", "loss", [("loss", "train", 1), ("eval_loss", "eval", 1)]),
    ("learning rate", "lr", [("lr", "lr", 1)]),
    ("throughput", "per second", [("tokens_per_s", "tokens/s", 1), ("samples_per_s", "samples/s", 1)]),
    ("MFU", "MFU (%)", [("mfu", "model FLOPs / peak", 100)]),
    ("memory", "GiB", [("mem_cuda_allocated_gib", "CUDA allocated", 1),
                       ("mem_cuda_reserved_gib", "CUDA reserved", 1),
                       ("mem_cuda_peak_gib", "CUDA peak", 1), ("mem_rss_gib", "CPU resident", 1),
                       ("peak_mem_bytes", "peak (allocator / RSS)", 1 / GiB)]),
    ("step time (mean over each log interval)", "seconds",
     [("step_time_avg_s", "step", 1), ("fwd_bwd_s", "forward + backward", 1),
      ("optim_s", "optimizer", 1), ("data_s", "data", 1), ("wait_s", "wait (1st collective)", 1)]),
]  # fmt: skip


def summary(run: str | Path) -> str:
    """Final figures in one line each."""
    recs = read_metrics(run)
    last = recs[-1]
    lines = [f"{run}: {len(recs)} logged steps, last step {last['step']}"]
    for k in ("loss", "eval_loss", "tokens_per_s", "samples_per_s", "mfu", "eta_s"):
        if k in last:
            lines.append(f"  {k:<14} {last[k]:.6g}")
    return "\n".join(lines)


def plot_report(run: str | Path, png: str | Path) -> None:
    plt = pyplot()
    recs = read_metrics(run)
    fig, axes = plt.subplots(2, 3, figsize=(15, 7.5))
    for ax, (title, ylabel, lines) in zip(axes.flat, PANELS):
        drawn = False
        for key, label, scale in lines:
            xs, ys = series(recs, key, "step")
            if xs:
                ax.plot(xs, [y * scale for y in ys], label=label, marker="o" if len(xs) < 3 else "")
                drawn = True
        if not drawn:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(fontsize="small")
    fig.suptitle(str(Path(run).name))
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
