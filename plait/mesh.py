"""Parallel dimensions: resolved and checked against the world size before any process group,
then turned into one DeviceMesh with named axes (pp, dp_replicate, dp_shard, cp, tp), torchtitan's
order: tp innermost (fastest links), cp next to it, then the data-parallel axes, pp outermost.

Context parallel ranks see the same batch rows (different sequence chunks), so the data-parallel
index comes from the ``dp`` view (dp_replicate x dp_shard) alone, while gradients are averaged
over dp and cp together: FSDP2 shards over the flattened dp_shard x cp view and the loss and
token counts are summed over the flattened dp x cp view (see docs/design.md, context parallel)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from plait.config import Config
from plait.errors import ConfigError

AXES = ("pp", "dp_replicate", "dp_shard", "cp", "tp")


@dataclass(frozen=True)
class ParallelDims:
    pp: int
    dp_replicate: int
    dp_shard: int
    tp: int
    world_size: int
    cp: int = 1  # context parallel (keyword: callers that predate it stay valid)
    ep: int = 1  # expert parallel: folded over dp_shard x cp, not an axis of its own

    @property
    def dp(self) -> int:
        """Ranks that see different data (replicas x shards)."""
        return self.dp_replicate * self.dp_shard

    @property
    def dp_cp(self) -> int:
        """Ranks over which gradients are averaged and the loss summed (dp x cp)."""
        return self.dp * self.cp

    def layout(self) -> dict[str, int]:
        """The degrees by axis name (run.json, checkpoint metadata)."""
        out = {axis: getattr(self, axis) for axis in AXES}
        return out | ({"ep": self.ep} if self.ep > 1 else {})

    @staticmethod
    def from_config(
        cfg: Config, world_size: int, *, hint: Callable[[Config, int], str] | None = None
    ) -> ParallelDims:
        """The configured dimensions over ``world_size`` ranks; ``hint`` (plait.preflight's list
        of layouts that would work) is appended to a mismatch error."""
        p = cfg.parallel
        more = (lambda: f"; {hint(cfg, world_size)}") if hint else (lambda: "")
        fixed = p.pp * p.dp_replicate * p.cp * p.tp
        if p.dp_shard == -1:
            if world_size % fixed:
                raise ConfigError(
                    f"parallel: pp={p.pp} x dp_replicate={p.dp_replicate} x cp={p.cp} x tp={p.tp} = {fixed} does not divide "
                    f"the world size {world_size}{more()}"
                )
            dp_shard = world_size // fixed
        else:
            dp_shard = p.dp_shard
        dims = ParallelDims(p.pp, p.dp_replicate, dp_shard, p.tp, world_size, cp=p.cp, ep=p.ep)
        product = fixed * dp_shard
        if product != world_size:
            raise ConfigError(
                f"parallel: pp={p.pp} x dp_replicate={p.dp_replicate} x dp_shard={dp_shard} x cp={p.cp} x tp={p.tp} = {product}, "
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
        """One DeviceMesh over all five axes, plus its flattened views: 'dp' (replicate x shard:
        which rows of the batch), 'dp_shard_cp' (what FSDP2 shards over) and 'dp_cp' (replicate
        x shard x cp: where gradients are averaged and the loss summed; expert parallel folds
        over it)."""
        # deferred: config checks and plait plan use ParallelDims without torch.distributed
        from torch.distributed.device_mesh import init_device_mesh

        root = init_device_mesh(
            device_type,
            (self.pp, self.dp_replicate, self.dp_shard, self.cp, self.tp),
            mesh_dim_names=AXES,
        )
        dp = root["dp_replicate", "dp_shard"]._flatten("dp")
        dp_shard_cp = dp_cp = dp
        if self.cp > 1:
            dp_shard_cp = root["dp_shard", "cp"]._flatten("dp_shard_cp")
            dp_cp = root["dp_replicate", "dp_shard", "cp"]._flatten("dp_cp")
        if self.dp_cp > 1 and self.tp > 1:
            # FSDP x TP parameters live on a (dp, tp) mesh; with this flattened axis registered,
            # DTensor reduces their norms in one all-reduce instead of one per axis
            dp_axes = (
                ("dp_replicate", "dp_shard", "cp") if self.cp > 1 else ("dp_replicate", "dp_shard")
            )
            root[(*dp_axes, "tp")]._flatten("dp_tp")
        return Meshes(root=root, dp=dp, dp_shard_cp=dp_shard_cp, dp_cp=dp_cp)


@dataclass(frozen=True)
class Meshes:
    """The root mesh (slice it by axis name: ``root["tp"]``) and its flattened views, kept here
    because slicing a flattened axis off the root is deprecated.

    ``dp``: replicate x shard (the batch rows a rank reads); ``dp_shard_cp``: shard x cp (FSDP2's
    shard axis); ``dp_cp``: replicate x shard x cp (gradient averaging, loss and token sums). At
    cp=1 the last two are ``dp``."""

    root: object
    dp: object
    dp_shard_cp: object = None
    dp_cp: object = None
