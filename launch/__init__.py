"""Ways to start ranks. ``local``: N processes on this machine, no launcher needed (``plait train
--nproc``). ``plait launch``: command builders for torchrun, deepspeed, accelerate, slurm and ray
(one small module each, pure functions), run by ``command.run``."""

from plait.launch.local import run_local

__all__ = ["run_local"]
