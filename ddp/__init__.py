"""Data-parallel engines. Only plain DDP lives here so far; ZeRO/FSDP2, DeepSpeed and fairscale
plug in through :func:`plait.parallelize.parallelize`."""

from plait.ddp.ddp import apply_ddp, no_sync

__all__ = ["apply_ddp", "no_sync"]
