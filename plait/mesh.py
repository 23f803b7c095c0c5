"""Parallel dimensions: resolved and checked against the world size before any process group,
then turned into one DeviceMesh with named axes (pp, dp_replicate, dp_shard, tp)."""

from __future__ import annotations

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

    @staticmethod
    def from_config(cfg: Config, world_size: int) -> ParallelDims:
        p = cfg.parallel
        fixed = p.pp * p.dp_replicate * p.tp
        if p.dp_shard == -1:
            if world_size % fixed:
                raise ConfigError(
                    f"parallel: pp={p.pp} x dp_replicate={p.dp_replicate} x tp={p.tp} = {fixed} does not divide "
                    f"the world size {world_size}; {_factorizations(cfg, world_size)}"
                )
            dp_shard = world_size // fixed
        else:
            dp_shard = p.dp_shard
        dims = ParallelDims(p.pp, p.dp_replicate, dp_shard, p.tp, world_size)
        product = fixed * dp_shard
        if product != world_size:
            raise ConfigError(
                f"parallel: pp={p.pp} x dp_replicate={p.dp_replicate} x dp_shard={dp_shard} x tp={p.tp} = {product}, "
                f"but the world size is {world_size}; {_factorizations(cfg, world_size)}"
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


def valid_layouts(cfg: Config, world_size: int) -> list[tuple[int, int, int]]:
    """(pp, dp_shard, tp) factorizations of ``world_size`` that this model and config accept:
    tp divides the model's heads/ffn/vocab, pp fits the blocks and schedule, the batch splits."""
    import dataclasses

    from plait.parallelize import check_supported

    divs = [d for d in range(1, world_size + 1) if world_size % d == 0]
    out = []
    for pp in divs:
        for tp in divs:
            if world_size % (pp * tp):
                continue
            dp = world_size // (pp * tp)
            par = dataclasses.replace(cfg.parallel, pp=pp, tp=tp, dp_shard=dp, dp_replicate=1)
            if tp > 1 and dp > 1 and par.zero_stage < 2:
                par = dataclasses.replace(par, zero_stage=3)
            trial = dataclasses.replace(cfg, parallel=par)
            try:
                dims = ParallelDims(pp, 1, dp, tp, world_size)
                dims.check_batch(trial)
                check_supported(trial, dims)
            except ConfigError:
                continue
            out.append((pp, dp, tp))
    return out


def _factorizations(cfg: Config, world_size: int) -> str:
    combos = [f"pp={pp} x dp_shard={dp} x tp={tp}" for pp, dp, tp in valid_layouts(cfg, world_size)]
    if not combos:
        return f"no layout of {world_size} ranks fits this model and batch"
    return (
        f"layouts of {world_size} ranks this model and batch accept: "
        + "; ".join(combos[:12])
        + (" ..." if len(combos) > 12 else "")
    )
