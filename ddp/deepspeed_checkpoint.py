"""DeepSpeed-engine checkpoints, behind plait's Checkpointer (same folders, manifest, atomic
rename, keep-K and auto-resume; plait.checkpoint dispatches here).

DeepSpeed's ZeRO optimizers keep flat fp32 partitions that torch's DCP state-dict helpers cannot
see, so the files are DeepSpeed's own (``engine.save_checkpoint`` under the tag ``deepspeed``),
with plait's step in its ``client_state``. They resume under DeepSpeed at
the same dp size and ZeRO stage; for any other layout, ``plait export`` consolidates the fp32
weights (DeepSpeed's ``zero_to_fp32``) into a safetensors file that ``checkpoint.init_from``
loads under any layout (the optimizer state does not follow: DeepSpeed's universal-checkpoint
conversion is not wired in).

Safe loading: DeepSpeed reads its files with ``torch.load(weights_only=False)``. Every ``.pt``
file is first opened with ``weights_only=True`` (DeepSpeed's few plain classes allowed by name),
so a file that would run code on unpickling is refused before DeepSpeed touches it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from plait.errors import PlaitError
from plait.models.base import canonical_name

TAG = "deepspeed"


def is_deepspeed(model: Any) -> bool:
    return type(model).__name__ == "DeepSpeedEngine" and hasattr(model, "save_checkpoint")


def save(engine, folder: Path, extra: dict[str, Any]) -> None:
    """Collective: every rank writes its partition into ``folder/deepspeed``."""
    engine.save_checkpoint(str(folder), tag=TAG, client_state={"plait": extra}, save_latest=False)


def _safe_globals() -> list:
    """Classes DeepSpeed pickles into its checkpoint files besides tensors and containers."""
    # deferred: deepspeed is an optional extra (this module is imported by every checkpoint)
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [ZeroStageEnum, LossScaler, fragment_address]


def check_files_safe(folder: Path) -> None:
    """Refuse a checkpoint whose pickles need more than tensors and DeepSpeed's plain classes."""
    with torch.serialization.safe_globals(_safe_globals()):
        for f in sorted((folder / TAG).glob("*.pt")):
            try:
                torch.load(f, map_location="cpu", weights_only=True, mmap=True)
            except Exception as e:  # noqa: BLE001 - any refusal means: do not unpickle it
                raise PlaitError(
                    f"checkpoint file {str(f)!r} holds objects other than tensors and "
                    f"DeepSpeed's own state ({type(e).__name__}: {str(e)[:200]}); refusing to load it"
                ) from None


def load(engine, folder: Path) -> dict[str, Any]:
    """Collective: load model, ZeRO optimizer partitions and plait's extra state."""
    check_files_safe(folder)
    path, client = engine.load_checkpoint(
        str(folder), tag=TAG, load_optimizer_states=True, load_lr_scheduler_states=False
    )
    if path is None:
        raise PlaitError(f"DeepSpeed could not load the checkpoint in {str(folder)!r}")
    return client["plait"]


def full_weights(folder: Path) -> dict[str, torch.Tensor]:
    """One process: consolidated fp32 weights under single-process names (ZeRO 0-3)."""
    check_files_safe(folder)
    states = sorted((folder / TAG).glob("*model_states.pt"))
    first = torch.load(states[0], map_location="cpu", weights_only=True, mmap=True)
    if not list((folder / TAG).glob("*optim_states.pt")) or not _zero(first):
        full = first["module"]  # ZeRO-0: the module's own full state dict
    else:
        # deferred: deepspeed is an optional extra
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        full = get_fp32_state_dict_from_zero_checkpoint(str(folder), tag=TAG)
    return {canonical_name(k): v.float().contiguous() for k, v in full.items()}


def _zero(model_states: dict) -> bool:
    stage = (model_states.get("ds_config") or {}).get("zero_optimization", {}).get("stage", 0)
    return int(stage) > 0
