"""Typed run configuration: YAML file + dotted ``key=value`` overrides, checked in one place.

Every key is a dataclass field with a ``help`` string; a mistake (unknown key, typo, wrong type,
impossible value) raises :class:`ConfigError` naming the key, the value and what is allowed,
before any process group, model or dataset exists. Checks that need the world size or the
model's shapes live in :mod:`plait.preflight`; which engine, stage, schedule and layout combine
is stated once, torch-free, in :mod:`plait.rules`.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from plait.bundled import bundled_configs, resolve_config
from plait.errors import ConfigError, did_you_mean
from plait.registry import DATA, MODELS, TASKS, fitting_data
from plait.rules import SCHEDULES


def _f(default: Any, help: str, key: str | None = None, **kw: Any) -> Any:
    """A dataclass field with its docstring (and optional YAML key differing from the name)."""
    meta = {"help": help}
    if key:
        meta["key"] = key
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


Schedule = Literal[tuple(SCHEDULES)]  # plait.rules' table of schedules and their traits


@dataclass(kw_only=True)
class ModelConfig:
    name: str = _f(
        "gpt",
        "Which model to build: a zoo model, or hf (a Hugging Face Transformers model), or module:name for one registered in a module of yours (plait/registry.py).",
    )
    preset: str = _f(
        "tiny",
        "Size preset (gpt: tiny, small, 125m, 350m, 1b, 8b, 70b, 405b; mixture of experts: moe_tiny, mixtral_8x7b, deepseek_v3; seed models: default).",
    )
    dim: int | None = _f(None, "gpt: hidden size (overrides the preset).")
    n_layers: int | None = _f(None, "gpt: number of transformer blocks (overrides the preset).")
    n_heads: int | None = _f(None, "gpt: attention heads (overrides the preset).")
    n_kv_heads: int | None = _f(
        None, "gpt: key/value heads for grouped-query attention (default n_heads)."
    )
    ffn_dim: int | None = _f(None, "gpt: SwiGLU intermediate size (overrides the preset).")
    vocab_size: int | Literal["auto"] | None = _f(
        None,
        "gpt: vocabulary size (overrides the preset; byte data needs >= 256; auto: the token data's, from its meta.json).",
    )
    max_seq_len: int | None = _f(
        None, "gpt: longest sequence RoPE is precomputed for (default data.seq_len)."
    )
    rope_theta: float = _f(10000.0, "gpt: RoPE base frequency.")
    moe_experts: int | None = _f(
        None,
        "gpt: routed experts per mixture-of-experts feed-forward (default: the preset's; 0 or none: dense).",
    )
    moe_top_k: int | None = _f(None, "gpt MoE: experts each token is routed to (default 2).")
    moe_ffn_dim: int | None = _f(
        None, "gpt MoE: each expert's SwiGLU width (default: the preset's, else ffn_dim)."
    )
    moe_shared: int | None = _f(None, "gpt MoE: shared experts every token also runs (default 0).")
    moe_score: Literal["softmax", "sigmoid"] | None = _f(
        None, "gpt MoE: router scores (sigmoid: DeepSeek-V3's, gates renormalised over the top-k)."
    )
    moe_route_scale: float | None = _f(None, "gpt MoE: factor on the gates (default 1).")
    moe_aux_loss: float | None = _f(
        None,
        "gpt MoE: weight of the sequence-wise load-balancing loss (DeepSeek-V3 eq. 17; 0: off).",
    )
    moe_bias_update: float | None = _f(
        None,
        "gpt MoE: speed of the auxiliary-loss-free balancing bias, updated each step from the global token counts (DeepSeek-V3; 0: off).",
    )
    moe_capacity_factor: float | None = _f(
        None,
        "gpt MoE: tokens of a sequence an expert takes, as a multiple of an even share; later positions beyond it are dropped (0: dropless).",
    )
    moe_first_dense: int | None = _f(
        None, "gpt MoE: the first n blocks keep a dense feed-forward (DeepSeek-V3: 3)."
    )
    norm_eps: float = _f(1e-5, "gpt: RMSNorm epsilon.")
    dropout: float = _f(
        0.0, "Dropout probability after hidden activations / attention and MLP outputs."
    )
    batchnorm: bool = _f(
        False,
        "seed_mlp / seed_bigmodel: BatchNorm1d after each hidden layer (the seed's regularisation chapter).",
    )
    hf_arch: str | None = _f(
        None,
        "hf: Transformers class, e.g. LlamaForCausalLM, MistralForCausalLM, GPT2LMHeadModel (default: the config's architectures[0]).",
    )
    hf_config: str | None = _f(
        None,
        "hf: a local config.json, or a folder holding one (default: hf_pretrained's, else the class defaults).",
    )
    hf_overrides: dict[str, Any] = _f(
        {},
        "hf: config fields set on top of hf_config, e.g. {hidden_size: 64, num_hidden_layers: 2}.",
    )
    hf_pretrained: str | None = _f(
        None,
        "hf: a local save_pretrained folder (safetensors) whose weights replace the random init.",
    )


@dataclass(kw_only=True)
class DataConfig:
    name: str = _f(
        "stdlib_text",
        "Dataset: synthetic (seeded), digits (sklearn, 28x28), mnist_idx (IDX files), stdlib_text (bytes of Python's stdlib sources), or module:name for one registered in a module of yours (plait/registry.py).",
    )
    seq_len: int = _f(128, "Tokens per sample for language-model data.")
    path: str | None = _f(
        None,
        "mnist_idx: folder with the IDX files; stdlib_text: a text file or source folder (default: this Python's stdlib); tokens: a prepared folder or .bin file.",
    )
    eval_fraction: float = _f(
        0.1, "Fraction of the data held out for evaluation (digits, mnist_idx, stdlib_text)."
    )
    # ---- data.name=tokens (plait.data.tokens) and the byte-level size limit
    mix: dict[str, float] = _f(
        {}, "tokens: prepared folders and their weights, e.g. {data/web: 0.7, data/code: 0.3}."
    )
    eval_path: str | None = _f(
        None, "tokens: held-out folder/.bin for evaluation (default: the last documents)."
    )
    dtype: str | None = _f(
        None, "tokens: dtype of raw .bin token files (uint16, uint32, int32, int64)."
    )
    verify: bool = _f(
        True,
        "tokens: check each shard's SHA-256 against meta.json at start (reads every byte once: set false for huge folders).",
    )
    max_bytes: int = _f(
        4 * 2**20, "stdlib_text: read at most this many bytes of the corpus (a cut is logged)."
    )
    prefetch: bool = _f(True, "Read the next step's batch in a background thread.")


@dataclass(kw_only=True)
class OptimConfig:
    name: Literal["sgd", "adam", "adamw"] = _f("adamw", "Optimizer.")
    lr: float = _f(3.0e-4, "Peak learning rate.")
    weight_decay: float = _f(0.0, "L2 (sgd/adam) or decoupled (adamw) weight decay.")
    momentum: float = _f(0.0, "sgd: momentum.")
    betas: list[float] = _f([0.9, 0.95], "adam/adamw: (beta1, beta2).")
    eps: float = _f(1e-8, "adam/adamw: epsilon.")
    schedule: Literal["constant", "cosine", "linear"] = _f(
        "cosine", "Learning-rate decay after warmup."
    )
    warmup_steps: int = _f(0, "Linear warmup steps from 0 to lr.")
    min_lr_ratio: float = _f(0.0, "Final lr as a fraction of lr (cosine/linear).")


@dataclass(kw_only=True)
class TrainConfig:
    steps: int = _f(100, "Optimizer steps.")
    global_batch: int = _f(
        32, "Samples per optimizer step, summed over data-parallel ranks and accumulation."
    )
    grad_accum: int = _f(1, "Micro-batches per optimizer step on each data-parallel rank.")
    grad_clip: float = _f(1.0, "Clip the global gradient norm to this; 0 turns clipping off.")
    seed: int = _f(0, "Seed for init, data order and dropout.")
    dtype: Literal["fp32", "bf16", "fp16"] = _f(
        "fp32", "Compute dtype (bf16/fp16 use autocast with fp32 master weights)."
    )
    device: Literal["auto", "cpu", "cuda"] = _f("auto", "auto: cuda when available, else cpu.")
    compile: bool = _f(
        False, "torch.compile each block (wrap order: after TP and activation checkpointing)."
    )
    eval_every: int = _f(
        0, "Evaluate on held-out data every N steps (0: only at the end when data has a split)."
    )
    eval_batches: int = _f(4, "Global batches per evaluation.")
    on_nan: Literal["stop", "skip"] = _f(
        "stop", "A non-finite loss stops the run, or skips that step's update."
    )
    max_nan_skips: int = _f(
        5, "train.on_nan=skip: stop after this many non-finite steps in a row (they repeat)."
    )


@dataclass(kw_only=True)
class ParallelConfig:
    dp_replicate: int = _f(1, "HSDP replicas (outer data-parallel dimension).")
    dp_shard: int = _f(
        -1, "Sharded data-parallel degree; -1: every rank not used by the other dimensions."
    )
    tp: int = _f(1, "Tensor-parallel degree.")
    ep: int = _f(
        1,
        "Expert-parallel degree: experts split over this many of the data-parallel (dp_shard x cp) ranks, tokens exchanged by all-to-all.",
    )
    cp: int = _f(
        1,
        "Context-parallel degree: the sequence split over cp ranks (2 x cp chunks, causal load balance).",
    )
    sequence_parallel: bool = _f(
        False, "Shard norms/dropout activations on the sequence dim (needs tp > 1)."
    )
    pp: int = _f(1, "Pipeline-parallel degree.")
    pp_schedule: Schedule = _f("1F1B", "Pipeline schedule.")
    pp_microbatches: int = _f(4, "Pipeline micro-batches per step.")
    pp_virtual_stages: int = _f(1, "Stages per pipeline rank (interleaved / looped / V schedules).")
    pp_cuts: list[int] = _f(
        [], "First block of each pipeline stage after the first (empty: balance automatically)."
    )
    pp_balance: Literal["params", "flops"] = _f(
        "params", "Automatic stage split: equalise parameter count or forward FLOPs per stage."
    )
    dp_engine: Literal["torch", "deepspeed", "fairscale"] = _f("torch", "Data-parallel engine.")
    zero_stage: int = _f(0, "0: DDP; 1: shard optimizer state; 2: + gradients; 3: + parameters.")
    reshard_after_forward: bool | int | Literal["auto"] = _f(
        "auto",
        "zero_stage=3 on the torch engine: free gathered parameters after forward (true), keep "
        "them to backward (false), or reshard to groups of this many ranks (an int dividing "
        "dp_shard); auto: true for every block but the last, whose backward comes first.",
    )
    zero_flat: bool | Literal["auto"] = _f(
        "auto",
        "zero_stage 1/2 on the torch engine: parameters replicated in flat buckets, gradients "
        "reduce-scattered bucket by bucket during backward (1: once per step, whole while "
        "accumulating; 2: every micro-batch), the optimizer on this rank's flat shard, "
        "parameters all-gathered after the step (DeepSpeed's layout); false: DDP + ZeroRedundancyOptimizer (1) / FSDP2 without reshard (2); auto: "
        "true where it composes (data parallel only: no tp, pp, cp, ep, HSDP or cpu_offload).",
    )
    zero_bucket_mb: float = _f(
        25.0, "zero_flat: gradient bucket size in MB (one collective per bucket)."
    )
    fsdp_unit_mb: float = _f(
        8.0,
        "zero_stage 2/3 on FSDP2: consecutive blocks share one fully_shard unit while their "
        "parameters stay within this many MB (fewer, larger collectives for small blocks; a "
        "larger block is its own unit); 0: one unit per block.",
    )
    reduce_every_microbatch: bool = _f(
        True,
        "zero_stage 2/3 on the torch engine: reduce-scatter gradients after every micro-batch "
        "(sharded while accumulating); false: only after the last (full gradients held, fewer "
        "collectives).",
    )
    activation_checkpoint: Literal["none", "full", "selective", "op"] = _f(
        "none",
        "Recompute block activations in backward: full (every block), selective (every k-th "
        "block), op (torchtitan's: every block keeps its attention output and every other "
        "matmul output, recomputes the rest).",
    )
    activation_checkpoint_every: int = _f(1, "With selective: checkpoint every k-th block.")
    cpu_offload: bool = _f(False, "Offload parameters/optimizer state to CPU (FSDP2 / DeepSpeed).")
    deepspeed_config: str | None = _f(
        None,
        "dp_engine=deepspeed: a DeepSpeed JSON whose keys override the config plait derives.",
    )
    timeout_s: float = _f(
        300.0, "Collective timeout: a dead or stuck rank ends the job after this long."
    )


@dataclass(kw_only=True)
class CheckpointConfig:
    dir: str | None = _f(None, "Checkpoint folder (default: <run_dir>/checkpoints when every > 0).")
    every: int = _f(0, "Save every N steps (0: never, except at the end when dir is set).")
    keep: int = _f(3, "Keep the newest K checkpoints.")
    async_save: bool = _f(False, "Save in the background.", key="async")
    init_from: str | None = _f(
        None,
        "Start from these weights (.safetensors from plait export; a seed checkpoint) instead of init.",
    )
    resume: Literal["auto", "never"] = _f(
        "auto", "auto: continue from the newest complete checkpoint in dir."
    )
    allow_config_change: bool = _f(
        False,
        "Resume even though model, data, seed, optimizer, batch, dtype or clipping differ from the checkpoint's config (the differences are warned about).",
    )


@dataclass(kw_only=True)
class LogConfig:
    run_dir: str | None = _f(None, "Run folder (default: runs/<name>-<time>).")
    every: int = _f(1, "Log every N steps.")
    tensorboard: bool = _f(True, "Write TensorBoard events to the run folder.")
    wandb: Literal["off", "offline", "online"] = _f(
        "offline",
        "Weights & Biases mode (offline makes no network connection; skipped when wandb is not installed).",
    )
    wandb_project: str = _f("plait", "Weights & Biases project.")
    progress: Literal["auto", "on", "off"] = _f(
        "auto", "Progress bar on rank 0 (auto: only on a TTY)."
    )
    pp_timeline: bool = _f(
        False,
        "pp > 1: time every pipeline action of the last step and write pp_timeline.json/.png (measured vs simulated bubble).",
    )
    profile_steps: list[int] = _f(
        [],
        "[first, last] steps (1-based, inclusive) to trace with torch.profiler: one Chrome trace per rank in <run>/profile.",
    )
    live_bytes: bool = _f(
        False,
        "CPU: record every tensor allocation (torch.profiler's memory events; slows every step) and log mem_live_peak_bytes, the most live tensor bytes during each step (what plait plan's peak is measured against).",
    )
    memory_snapshot: int = _f(
        0,
        "CUDA only: record allocator history and dump a snapshot after this step (and on out-of-memory) to <run>/memory; 0: off.",
    )
    straggler_factor: float = _f(
        1.5,
        "Name the slowest rank on the log line when its busy step time exceeds this x the other ranks' median (0: off).",
    )


@dataclass(kw_only=True)
class Config:
    name: str = _f("run", "Run name (used in the default run folder).")
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)


# ---------------------------------------------------------------- loading


class _Loader(yaml.SafeLoader):
    """YAML 1.2 booleans: only true/false. YAML 1.1 would read ``wandb: off`` as False. A
    duplicate key is refused (PyYAML keeps the last silently), and so is an alias (``*name``):
    a config has no use for one, and a few hundred bytes of nested aliases expand to gigabytes."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not allowed", self.peek_event().start_mark
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


_Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:bool"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
for _first in "tTfF":
    _Loader.add_implicit_resolver(
        "tag:yaml.org,2002:bool",
        re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
        list(_first),
    )


def _yaml(text: str):
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader


def _yaml_error(e: yaml.YAMLError) -> str:
    """One line: the problem and where (``duplicate key 'steps' (line 3, column 3)``)."""
    mark = getattr(e, "problem_mark", None)
    what = getattr(e, "problem", None) or str(e).splitlines()[0]
    return f"{what} (line {mark.line + 1}, column {mark.column + 1})" if mark else what


def _key(f: dataclasses.Field) -> str:
    return f.metadata.get("key", f.name)


def _to_dict(obj: Any) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        out[_key(f)] = (
            _to_dict(v)
            if dataclasses.is_dataclass(v)
            else (type(v)(v) if isinstance(v, (list, dict)) else v)
        )
    return out


def _describe(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in args)
    if origin is list:
        return f"a list of {_describe(args[0])}"
    if origin is dict:
        return "a mapping of names to values"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        tp, str(tp)
    )


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Return ``value`` as type ``tp`` or raise ConfigError naming the key and the allowed values."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    bad = ConfigError(f"{key}: {value!r} is not allowed; expected {_describe(tp)}")
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(
            f"{key}: {value!r} is not allowed; expected {_describe(tp)}{did_you_mean(value, args)}"
        )
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError:
                pass
        raise bad
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise bad
        return dict(value)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise bad
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**63:
            return value
        raise bad
    if tp is float:
        try:  # PyYAML reads "3e-4" (no dot) as a string
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                raise bad
            out = float(value)
        except (ValueError, OverflowError):
            raise bad from None
        if math.isfinite(out):
            return out
        raise ConfigError(f"{key}: {value!r} is not allowed; expected a finite number")
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    raise bad


def _build(cls: type, data: Any, prefix: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {_key(f): f for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in data.items():
        full = f"{prefix}{k}"
        if k not in fields:
            raise ConfigError(
                f"unknown config key '{full}'{did_you_mean(k, fields)}; "
                f"allowed in {prefix.rstrip('.') or 'the top level'}: {', '.join(sorted(fields))}"
            )
        f = fields[k]
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            kwargs[f.name] = _build(tp, v, f"{full}.")
        else:
            kwargs[f.name] = _coerce(v, tp, full)
    return cls(**kwargs)


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{dotted}': '{p}' is not a section")
    node[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["train.steps=10", "optim.lr=1e-3"]`` -> nested dict; values parsed as YAML scalars."""
    tree: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value (for example train.steps=10)")
        key, raw = item.split("=", 1)
        _set_dotted(tree, key.strip(), _yaml(raw) if raw.strip() else None)
    return tree


def merge(base: dict, over: dict) -> dict:
    """``base`` with ``over``'s keys, nested dicts merged key by key (overrides, DeepSpeed's
    config file over plait's)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read YAML (or start from defaults), apply overrides, type-check and value-check."""
    raw: dict[str, Any] = {}
    if path is not None:
        p = resolve_config(path)
        if p is None:
            raise ConfigError(
                f"config file {str(path)!r} does not exist; pass a YAML file or a shipped "
                f"config name: {', '.join(bundled_configs())}"
            )
        try:
            raw = _yaml(p.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as e:
            raise ConfigError(
                f"config file {str(p)!r} is not UTF-8 text (byte {e.start}); save it as UTF-8"
            ) from None
        except yaml.YAMLError as e:
            raise ConfigError(
                f"config file {str(p)!r} is not valid YAML: {_yaml_error(e)}"
            ) from None
        if not isinstance(raw, dict):
            raise ConfigError(
                f"config file {str(p)!r} holds a {type(raw).__name__}, not a mapping of sections "
                "(model:, train:, ...)"
            )
    cfg = from_dict(merge(raw, parse_overrides(overrides or [])))
    return cfg


def from_dict(raw: dict[str, Any]) -> Config:
    cfg = _build(Config, raw, "")
    check_values(cfg)
    return cfg


# ---------------------------------------------------------------- value checks


def _require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {value!r} is not allowed; {allowed}")


def check_values(cfg: Config) -> None:
    """Checks that need only the config itself (no world size, no model shapes)."""
    t, o, p, d, m = cfg.train, cfg.optim, cfg.parallel, cfg.data, cfg.model
    _require(t.steps >= 1, "train.steps", t.steps, "must be >= 1")
    for k in ("steps", "global_batch", "grad_accum", "eval_batches"):  # sane, and no overflow
        v = getattr(t, k)
        _require(v <= 2**31 - 1, f"train.{k}", v, "must be <= 2**31 - 1")
    _require(d.seq_len <= 2**31 - 1, "data.seq_len", d.seq_len, "must be <= 2**31 - 1")
    _require(t.global_batch >= 1, "train.global_batch", t.global_batch, "must be >= 1")
    _require(t.grad_accum >= 1, "train.grad_accum", t.grad_accum, "must be >= 1")
    _require(
        t.grad_clip >= 0, "train.grad_clip", t.grad_clip, "must be >= 0 (0 turns clipping off)"
    )
    _require(t.eval_every >= 0, "train.eval_every", t.eval_every, "must be >= 0")
    _require(t.eval_batches >= 1, "train.eval_batches", t.eval_batches, "must be >= 1")
    _require(t.max_nan_skips >= 1, "train.max_nan_skips", t.max_nan_skips, "must be >= 1")
    _require(o.lr > 0, "optim.lr", o.lr, "must be > 0")
    _require(o.weight_decay >= 0, "optim.weight_decay", o.weight_decay, "must be >= 0")
    _require(0 <= o.momentum < 1, "optim.momentum", o.momentum, "must be in [0, 1)")
    _require(
        len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas),
        "optim.betas",
        o.betas,
        "must be two numbers in [0, 1)",
    )
    # longer than the run: clamped to train.steps with a warning in the banner (torchtitan's)
    _require(o.warmup_steps >= 0, "optim.warmup_steps", o.warmup_steps, "must be >= 0")
    _require(0 <= o.min_lr_ratio <= 1, "optim.min_lr_ratio", o.min_lr_ratio, "must be in [0, 1]")
    _require(d.seq_len >= 2, "data.seq_len", d.seq_len, "must be >= 2")
    _require(0 <= d.eval_fraction < 1, "data.eval_fraction", d.eval_fraction, "must be in [0, 1)")
    _require(0 <= m.dropout < 1, "model.dropout", m.dropout, "must be in [0, 1)")
    _require(d.max_bytes >= 1, "data.max_bytes", d.max_bytes, "must be >= 1")
    _require(
        m.vocab_size != "auto" or d.name == "tokens",
        "model.vocab_size",
        "auto",
        "needs data.name=tokens (the vocabulary is read from its meta.json)",
    )
    for k in (
        "dp_replicate",
        "tp",
        "ep",
        "cp",
        "pp",
        "pp_microbatches",
        "pp_virtual_stages",
        "activation_checkpoint_every",
    ):
        v = getattr(p, k)
        _require(v >= 1, f"parallel.{k}", v, "must be >= 1")
    _require(
        p.dp_shard == -1 or p.dp_shard >= 1,
        "parallel.dp_shard",
        p.dp_shard,
        "must be >= 1, or -1 for every remaining rank",
    )
    _require(
        p.zero_stage in (0, 1, 2, 3),
        "parallel.zero_stage",
        p.zero_stage,
        "expected one of 0, 1, 2, 3",
    )
    r = p.reshard_after_forward
    _require(
        isinstance(r, bool) or r == "auto" or r >= 1,
        "parallel.reshard_after_forward",
        r,
        "expected auto, true, false or a group size >= 1",
    )
    _require(p.fsdp_unit_mb >= 0, "parallel.fsdp_unit_mb", p.fsdp_unit_mb, "must be >= 0")
    _require(p.zero_bucket_mb > 0, "parallel.zero_bucket_mb", p.zero_bucket_mb, "must be > 0")
    # below a second every collective times out; above a week a hang is never noticed
    _require(
        1 <= p.timeout_s <= 7 * 86400,
        "parallel.timeout_s",
        p.timeout_s,
        "must be between 1 and 604800 seconds (a week)",
    )
    _require(
        not p.sequence_parallel or p.tp > 1,
        "parallel.sequence_parallel",
        True,
        "needs parallel.tp > 1",
    )
    _require(cfg.checkpoint.every >= 0, "checkpoint.every", cfg.checkpoint.every, "must be >= 0")
    _require(cfg.checkpoint.keep >= 1, "checkpoint.keep", cfg.checkpoint.keep, "must be >= 1")
    _require(cfg.log.every >= 1, "log.every", cfg.log.every, "must be >= 1")
    task = MODELS.get(m.name).task  # ConfigError for an unknown name, listing the known ones
    if task not in DATA.get(d.name).tasks:
        fits = [repr(n) for n in fitting_data(task)]
        words = " or ".join([", ".join(fits[:-1]), fits[-1]] if len(fits) > 1 else fits)
        _require(
            False, "data.name", d.name, f"model {m.name} takes {TASKS.get(task, task)}: {words}"
        )


def field_help() -> dict[str, str]:
    """Every dotted key with its help text (used by the CLI surface snapshot and docs)."""
    out = {}
    for top in dataclasses.fields(Config):
        sub = typing.get_type_hints(Config)[top.name]
        if dataclasses.is_dataclass(sub):
            for f in dataclasses.fields(sub):
                out[f"{top.name}.{_key(f)}"] = f.metadata.get("help", "")
        else:
            out[top.name] = top.metadata.get("help", "")
    return out
