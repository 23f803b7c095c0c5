"""The options whose numbers depend on the layout, and the one-line note printed at start.

Every layout gives one process's numbers (README, "Any layout, same numbers") except where the
model itself depends on how the batch is cut or on the random stream of a rank:

- BatchNorm normalises with the statistics of the batch a forward sees and updates its running
  statistics once per forward: per data-parallel rank's slice, per pipeline micro-batch and per
  gradient-accumulation chunk (SyncBatchNorm is CUDA-only).
- Dropout masks come from each rank's generator (seeded per dp rank; pipeline stages each start
  it afresh; tp ranks share it, see plait.tensor_parallel; cp ranks draw for their own chunks)
  in the order forwards run, so dp, cp, tp, pp and gradient accumulation each draw other masks
  than one process.
"""

from __future__ import annotations

from plait.config import Config
from plait.mesh import ParallelDims


def layout_note(cfg: Config, dims: ParallelDims) -> str | None:
    """A one-line note when an option meets a layout that changes its numbers, else None."""
    p, accum = cfg.parallel, cfg.train.grad_accum
    # what cuts the batch a forward sees, and what runs forwards on other generators / in
    # another order
    slices = {"dp": dims.dp, "pp_microbatches": p.pp_microbatches if dims.pp > 1 else 1}
    streams = {"dp": dims.dp, "cp": dims.cp, "tp": dims.tp, "pp": dims.pp}
    notes = []
    if getattr(cfg.model, "batchnorm", False):
        by = [f"{k}={v}" for k, v in {**slices, "grad_accum": accum}.items() if v > 1]
        if by:
            notes.append(f"model.batchnorm normalises per slice ({', '.join(by)})")
    if getattr(cfg.model, "dropout", 0.0) > 0:
        by = [f"{k}={v}" for k, v in {**streams, "grad_accum": accum}.items() if v > 1]
        if by:
            notes.append(f"model.dropout draws other masks ({', '.join(by)})")
    if not notes:
        return None
    return (
        f"note: {'; '.join(notes)}, so this run's numbers differ from one process with "
        "grad_accum=1 (layout-dependent options: README, 'Any layout, same numbers')"
    )
