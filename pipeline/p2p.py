"""Point-to-point send of a tensor whose shape the receiver does not know (forward-only
evaluation): a fixed-size header (dtype, ndim, shape) first, then the data."""

from __future__ import annotations

import torch
import torch.distributed as dist

_DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.int64, torch.int32]
_MAX_DIMS = 8


def send_tensor(t: torch.Tensor, dst: int, group) -> None:
    header = torch.zeros(2 + _MAX_DIMS, dtype=torch.int64)
    header[0], header[1] = _DTYPES.index(t.dtype), t.dim()
    header[2 : 2 + t.dim()] = torch.tensor(t.shape)
    dist.send(header.to(t.device), group=group, group_dst=dst)
    dist.send(t.contiguous(), group=group, group_dst=dst)


def recv_tensor(src: int, group, device: torch.device) -> torch.Tensor:
    header = torch.zeros(2 + _MAX_DIMS, dtype=torch.int64, device=device)
    dist.recv(header, group=group, group_src=src)
    dtype, ndim = _DTYPES[int(header[0])], int(header[1])
    out = torch.empty(header[2 : 2 + ndim].tolist(), dtype=dtype, device=device)
    dist.recv(out, group=group, group_src=src)
    return out
