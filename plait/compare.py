"""``plait compare A B``: two runs' loss curves side by side, the largest relative difference,
and optionally a PNG of both curves."""

from __future__ import annotations

from pathlib import Path

from plait.metrics import read_metrics


def loss_table(
    a: str | Path, b: str | Path
) -> tuple[list[tuple[int, float | None, float | None]], float]:
    """Rows (step, loss_a, loss_b) over the union of steps, and max |a-b|/|a| over shared steps."""
    la = {r["step"]: r["loss"] for r in read_metrics(a) if "loss" in r}
    lb = {r["step"]: r["loss"] for r in read_metrics(b) if "loss" in r}
    rows = [(s, la.get(s), lb.get(s)) for s in sorted(set(la) | set(lb))]
    shared = [(x, y) for _, x, y in rows if x is not None and y is not None]
    max_rel = max((abs(x - y) / max(abs(x), 1e-12) for x, y in shared), default=float("nan"))
    return rows, max_rel


def format_table(a: str | Path, b: str | Path) -> str:
    rows, max_rel = loss_table(a, b)
    w = max(len(str(a)), len(str(b)), 10)

    def cell(v: float | None) -> str:
        return f"{v:>{w}.6f}" if v is not None else f"{'-':>{w}}"

    lines = [f"{'step':>6}  {str(a):>{w}}  {str(b):>{w}}  {'rel diff':>10}"]
    for s, x, y in rows:
        rel = (
            f"{abs(x - y) / max(abs(x), 1e-12):10.2e}"
            if x is not None and y is not None
            else f"{'-':>10}"
        )
        lines.append(f"{s:>6}  {cell(x)}  {cell(y)}  {rel}")
    lines.append(
        f"max relative difference over {sum(1 for _, x, y in rows if x is not None and y is not None)} shared steps: {max_rel:.3e}"
    )
    return "\n".join(lines)


def plot(a: str | Path, b: str | Path, png: str | Path) -> None:
    # deferred: matplotlib (heavy) only when a picture is asked for
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, max_rel = loss_table(a, b)
    fig, ax = plt.subplots(figsize=(7, 4))
    for idx, label, style in ((1, str(a), "-"), (2, str(b), "--")):
        pts = [(r[0], r[idx]) for r in rows if r[idx] is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(f"max relative difference {max_rel:.2e}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
