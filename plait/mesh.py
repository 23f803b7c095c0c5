"""Parallel dimensions: resolved and checked against the world size before any process group,
then turned into one DeviceMesh with named axes (pp, dp_replicate, dp_shard, tp)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from plait.config import Config
from plait.errors import ConfigError

AXES = ("pp", "dp_replicate", "dp_shard", "tp")


@dataclass(frozen=True)
class ParallelDims:
    pp: int
    dp_replicate: int
    dp_shard: int
    tp: int
    world_size: int

    @property
    def dp(self) -> int:
        """Ranks that see different data (replicas x shards)."""
        return self.dp_replicate * self.dp_shard

    def layout(self) -> dict[str, int]:
        """The degrees by axis name (run.json, checkpoint metadata)."""
        return {axis: getattr(self, axis) for axis in AXES}

    @staticmethod
    def from_config(
        cfg: Config, world_size: int, *, hint: Callable[[Config, int], str] | None = None
    ) -> ParallelDims:
        """The configured dimensions over ``world_size`` ranks; ``hint`` (plait.preflight's list
        of layouts that would work) is appended to a mismatch error."""
        p = cfg.parallel
        more = (lambda: f"; {hint(cfg, world_size)}") if hint else (lambda: "")
        fixed = p.pp * p.dp_replicate * p.tp
        if p.dp_shard == -1:
            if world_size % fixed:
                raise ConfigError(
                    f"parallel: pp={p.pp} x dp_replicate={p.dp_replicate} x tp={p.tp} = {fixed} does not divide "
                    f"the world size {world_size}{more()}"
                )
            dp_shard = world_size // fixed
        else:
            dp_shard = p.dp_shard
        dims = ParallelDims(p.pp, p.dp_replicate, dp_shard, p.tp, world_size)
        product = fixed * dp_shard
        if product != world_size:
            raise ConfigError(
                f"parallel: pp={p.pp} x dp_replicate={p.dp_replicate} x dp_shard={dp_shard} x tp={p.tp} = {product}, "
                f"but the world size is {world_size}{more()}"
            )
        dims.check_batch(cfg)
        return dims

    def check_batch(self, cfg: Config) -> None:
        t = cfg.train
        per = self.dp * t.grad_accum
        if t.global_batch % per:
            ok = [b for b in range(per, 4 * per + 1, per)]
            raise ConfigError(
                f"train.global_batch: {t.global_batch} does not split over dp={self.dp} ranks x grad_accum={t.grad_accum}; "
                f"use a multiple of {per} (e.g. {', '.join(map(str, ok))})"
            )

    def build_mesh(self, device_type: str) -> Meshes:
        """One DeviceMesh over all four axes, plus its flattened 'dp' axis (replicate x shard)."""
        # deferred: config checks and plait plan use ParallelDims without torch.distributed
        from torch.distributed.device_mesh import init_device_mesh

        root = init_device_mesh(
            device_type, (self.pp, self.dp_replicate, self.dp_shard, self.tp), mesh_dim_names=AXES
        )
        dp = root["dp_replicate", "dp_shard"]._flatten("dp")
        if self.dp > 1 and self.tp > 1:
            # FSDP x TP parameters live on a (dp, tp) mesh; with this flattened axis registered,
            # DTensor reduces their norms in one all-reduce instead of one per axis
            root["dp_replicate", "dp_shard", "tp"]._flatten("dp_tp")
        return Meshes(root=root, dp=dp)


@dataclass(frozen=True)
class Meshes:
    """The root mesh (slice it by axis name: ``root["tp"]``) and the flattened dp mesh, kept
    here because slicing a flattened axis off the root is deprecated."""

    root: object
    dp: object
