"""Device and interconnect presets as data, each number with where it comes from.

Bandwidths are per GPU and per direction (what one rank can push into a collective). The
latency ``alpha_s`` of each link is an assumption of this model (typical NCCL per-hop latency),
not a vendor figure; it only matters for small messages.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from plait.errors import ConfigError, did_you_mean


@dataclass(frozen=True)
class GPU:
    name: str
    peak_flops: float  # dense bf16/fp16 tensor-core FLOP/s (no sparsity): the MFU denominator
    fp32_flops: float  # plain fp32 (torch's default matmul precision, no TF32)
    mem_bytes: int
    hbm_bytes_per_s: float
    nvlink_bytes_per_s: float  # per GPU, per direction, inside one NVLink/NVSwitch domain
    source: str
    fp8_flops: float = 0.0  # dense fp8 tensor-core FLOP/s; 0: no fp8 units (runs at bf16 rate)
    #: share of the dense peak large bf16 GEMMs reach (cuBLAS, square 8k matrices): an
    #: assumption of this model, fitted to plait.plan.published's tuned rows, not a vendor figure
    matmul_eff: float = 0.75
    #: the same for fp8 GEMMs against the fp8 peak (Transformer Engine / torchao float8)
    fp8_matmul_eff: float = 0.55
    #: flash attention (forward + backward) against the bf16 peak
    attn_eff: float = 0.5


GiB = 1024**3

GPUS: dict[str, GPU] = {
    "h100": GPU(
        "H100 SXM5 80GB", 989.4e12, 66.9e12, 80 * GiB, 3.35e12, 450e9,
        "NVIDIA H100 Tensor Core GPU datasheet: 989.4 TFLOPS bf16 dense, 1,979 fp8 dense, 66.9 fp32, "
        "80 GB HBM3 at 3.35 TB/s, NVLink 4 900 GB/s bidirectional",
        fp8_flops=1978.9e12, matmul_eff=0.8, fp8_matmul_eff=0.75, attn_eff=0.55,
    ),
    "h100-pcie": GPU(
        "H100 PCIe 80GB", 756.5e12, 51.2e12, 80 * GiB, 2.0e12, 300e9,
        "NVIDIA H100 Tensor Core GPU datasheet (PCIe): 756 TFLOPS bf16 dense, 1,513 fp8, 51 fp32, "
        "80 GB HBM2e at 2.0 TB/s, NVLink bridge 600 GB/s bidirectional (pairs)",
        fp8_flops=1513e12, matmul_eff=0.8, fp8_matmul_eff=0.75, attn_eff=0.55,
    ),
    "h200": GPU(
        "H200 SXM 141GB", 989.4e12, 66.9e12, 141 * 10**9, 4.8e12, 450e9,
        "NVIDIA H200 Tensor Core GPU datasheet: 989 TFLOPS bf16 dense, 1,979 fp8, 67 fp32, "
        "141 GB HBM3e at 4.8 TB/s, NVLink 900 GB/s bidirectional",
        fp8_flops=1978.9e12, matmul_eff=0.8, fp8_matmul_eff=0.75, attn_eff=0.55,
    ),
    "b200": GPU(
        "B200 SXM 180GB", 2250e12, 75e12, 180 * 10**9, 7.7e12, 900e9,
        "NVIDIA HGX B200 datasheet: 2.25 PFLOPS bf16 dense (4.5 sparse), 4.5 fp8 dense, 75 fp32, "
        "180 GB HBM3e at 7.7 TB/s, NVLink 5 1.8 TB/s bidirectional",
        fp8_flops=4500e12, matmul_eff=0.8, fp8_matmul_eff=0.75, attn_eff=0.55,
    ),
    "mi300x": GPU(
        "MI300X OAM 192GB", 1307.4e12, 163.4e12, 192 * 10**9, 5.3e12, 448e9,
        "AMD Instinct MI300X datasheet: 1,307.4 TFLOPS bf16 dense, 2,614.9 fp8, 163.4 fp32, "
        "192 GB HBM3 at 5.3 TB/s, Infinity Fabric 896 GB/s aggregate bidirectional",
        fp8_flops=2614.9e12, matmul_eff=0.5, fp8_matmul_eff=0.4, attn_eff=0.35,
    ),
    "a100": GPU(
        "A100 SXM4 80GB", 312e12, 19.5e12, 80 * GiB, 2.039e12, 300e9,
        "NVIDIA A100 Tensor Core GPU datasheet: 312 TFLOPS bf16 dense, 19.5 fp32, 80 GB HBM2e at "
        "2,039 GB/s, NVLink 3 600 GB/s bidirectional (no fp8 units)",
        matmul_eff=0.86, attn_eff=0.55,
    ),
    "a100-40g": GPU(
        "A100 SXM4 40GB", 312e12, 19.5e12, 40 * GiB, 1.555e12, 300e9,
        "NVIDIA A100 Tensor Core GPU datasheet: 312 TFLOPS bf16 dense, 19.5 fp32, 40 GB HBM2 at "
        "1,555 GB/s, NVLink 3 600 GB/s bidirectional (no fp8 units)",
        matmul_eff=0.86, attn_eff=0.55,
    ),
}  # fmt: skip


@dataclass(frozen=True)
class Interconnect:
    name: str
    bytes_per_s: float  # per GPU, per direction, between nodes
    alpha_s: float
    source: str


INTERCONNECTS: dict[str, Interconnect] = {
    "nvlink": Interconnect(
        "one NVLink domain (all GPUs on NVSwitch)", 450e9, 3e-6,
        "NVLink 4 / NVSwitch, 900 GB/s bidirectional per GPU (NVIDIA DGX H100 / GB200 NVL72 docs)",
    ),
    "ib": Interconnect(
        "InfiniBand NDR, 400 Gb/s per GPU", 50e9, 8e-6,
        "NVIDIA ConnectX-7 / Quantum-2 NDR 400 Gb/s, one NIC per GPU (DGX H100 user guide)",
    ),
    "ib-hdr": Interconnect(
        "InfiniBand HDR, 200 Gb/s per GPU", 25e9, 8e-6,
        "Mellanox HDR 200 Gb/s, one NIC per GPU (DGX A100 user guide; Selene in arXiv 2104.04473)",
    ),
    "roce": Interconnect(
        "RoCE Ethernet, 400 Gb/s per GPU", 50e9, 12e-6,
        "Llama 3 405B cluster: RoCE, 400 Gbps between GPUs (arXiv 2407.21783 sec. 3.3.1)",
    ),
    "ethernet": Interconnect(
        "Ethernet, one 100 GbE NIC per 8-GPU node", 12.5e9 / 8, 25e-6,
        "100 Gb/s = 12.5 GB/s per node, shared by its 8 GPUs (IEEE 802.3 100GBASE)",
    ),
}  # fmt: skip


@dataclass(frozen=True)
class Cluster:
    """N GPUs in nodes of ``gpus_per_node``; NVLink inside a node, ``net`` between nodes."""

    gpu: GPU
    net: Interconnect
    gpus: int
    gpus_per_node: int = 8

    @property
    def nodes(self) -> int:
        return -(-self.gpus // self.gpus_per_node)

    def link(self, stride: int, size: int) -> tuple[float, float]:
        """(alpha_s, bytes_per_s) of a group of ``size`` ranks ``stride`` apart in rank order:
        NVLink when the group stays inside one node, else the network. Across nodes each GPU
        sends through its own NIC (the presets' "per GPU" figure) and NCCL runs one ring
        channel per NIC, so a group with k members in each node crosses between nodes on k NICs
        at once: k x the per-GPU network rate, capped by NVLink (NCCL's rings, nccl-tests'
        bus bandwidth: 8 x 400 Gb/s NDR nodes reach ~400 GB/s, not 50). One member per node
        (dp under tp = 8) gets one NIC."""
        if stride * size <= self.gpus_per_node:
            return 3e-6, self.gpu.nvlink_bytes_per_s
        k = self.per_node(stride, size)
        return self.net.alpha_s, min(self.gpu.nvlink_bytes_per_s, k * self.net.bytes_per_s)

    def per_node(self, stride: int, size: int) -> int:
        """Members of a group of ``size`` ranks ``stride`` apart that share one node."""
        return max(1, min(size, self.gpus_per_node // stride))


def parse_bytes(text: str) -> int:
    """'80GiB', '141GB', '80 GiB', '8e10' -> bytes."""
    m = re.fullmatch(r"\s*([0-9.eE+]+)\s*([KMGT]i?B|B)?\s*", str(text))
    if not m:
        raise ConfigError(f"--gpu-mem: {text!r} is not a size; write e.g. 80GiB or 141GB")
    unit = m.group(2) or "B"
    scale = {"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}.get(unit)
    if scale is None:
        scale = 1024 ** ("KMGT".index(unit[0]) + 1)
    return int(float(m.group(1)) * scale)


def parse_rate(flag: str, text: str | float | None) -> float | None:
    """'989e12', '3.35e12', 989.4e12 -> a positive float (FLOP/s or bytes/s); None passes."""
    if text is None:
        return None
    try:
        v = float(text)
    except ValueError:
        v = -1.0
    if not v > 0:
        raise ConfigError(f"{flag}: {text!r} is not a positive number; write e.g. 989e12")
    return v


def make_cluster(
    gpu: str = "h100",
    gpus: int = 8,
    *,
    interconnect: str = "ib",
    nodes: int | None = None,
    gpu_mem: str | None = None,
    gpus_per_node: int | None = None,
    peak_flops: str | float | None = None,
    hbm_bw: str | float | None = None,
    net_bw: str | float | None = None,
    nvlink_bw: str | float | None = None,
) -> Cluster:
    """Cluster from preset names; a user mistake raises ConfigError naming the allowed names.
    ``peak_flops`` (dense bf16 FLOP/s; fp8 scales with it), ``hbm_bw``, ``net_bw`` (per GPU
    between nodes) and ``nvlink_bw`` (per GPU inside a node), in bytes/s, override the preset:
    the preset's name then says so."""
    if gpu not in GPUS:
        raise ConfigError(
            f"--gpu: {gpu!r} is not a preset{did_you_mean(gpu, GPUS)}; allowed: {', '.join(GPUS)}"
        )
    if interconnect not in INTERCONNECTS:
        raise ConfigError(
            f"--interconnect: {interconnect!r} is not a preset{did_you_mean(interconnect, INTERCONNECTS)}; "
            f"allowed: {', '.join(INTERCONNECTS)}"
        )
    if gpus < 1:
        raise ConfigError(f"--gpus: {gpus} is not allowed; must be >= 1")
    g, net = GPUS[gpu], INTERCONNECTS[interconnect]
    changed = []
    if gpu_mem is not None:
        g = replace(g, mem_bytes=parse_bytes(gpu_mem))
        changed.append(f"{gpu_mem} memory")
    flops = parse_rate("--peak-flops", peak_flops)
    if flops is not None:
        g = replace(g, peak_flops=flops, fp8_flops=g.fp8_flops * flops / g.peak_flops)
        changed.append(f"{flops / 1e12:g} TFLOP/s")
    hbm = parse_rate("--hbm-bw", hbm_bw)
    if hbm is not None:
        g = replace(g, hbm_bytes_per_s=hbm)
        changed.append(f"HBM {hbm / 1e12:g} TB/s")
    nvl = parse_rate("--nvlink-bw", nvlink_bw)
    if nvl is not None:
        g = replace(g, nvlink_bytes_per_s=nvl)
        changed.append(f"NVLink {nvl / 1e9:g} GB/s")
    if changed:  # the header names what the user gave, not the preset's figures
        g = replace(g, name=f"{g.name.rsplit(' ', 1)[0]} ({', '.join(changed)})")
    nbw = parse_rate("--net-bw", net_bw)
    if nbw is not None:
        net = replace(net, name=f"{net.name} at {nbw / 1e9:g} GB/s per GPU", bytes_per_s=nbw)
    per_node = gpus_per_node or 8
    if nodes is not None:
        if nodes < 1 or gpus % nodes:
            raise ConfigError(
                f"--nodes: {nodes} does not divide --gpus {gpus}; pick a divisor of {gpus}"
            )
        per_node = gpus // nodes
    return Cluster(g, net, gpus, min(per_node, gpus))
