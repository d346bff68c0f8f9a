"""The GPU registry: one profile per target, declared as data, each figure with its source.

Throughputs are dense (no 2:4 sparsity), per GPU, in TFLOP/s. A format the GPU cannot run natively is None.
`arch` is the key other tables are looked up by (auto quant, capabilities live in spec/capabilities).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GpuProfile:
    name: str
    arch: str                  # "blackwell" | "hopper" | "ada" | "ampere" | "cpu"
    sm: int | None             # compute capability as an integer (100 = SM 10.0); None for the CPU
    memory_gb: float           # device memory, 10^9 bytes
    bandwidth_tb_s: float      # memory bandwidth, 10^12 bytes/s
    bf16_tflops: float
    fp8_tflops: float | None
    fp4_tflops: float | None
    interconnect: str
    interconnect_gb_s: float   # per-GPU bandwidth to its peers, one direction-sum as marketed
    max_gpus_per_node: int
    source: str

    @property
    def native_fp8(self) -> bool:
        return self.fp8_tflops is not None

    @property
    def native_fp4(self) -> bool:
        return self.fp4_tflops is not None

    @property
    def memory_bytes(self) -> float:
        return self.memory_gb * 1e9


_B200 = "NVIDIA DGX B200 / HGX B200 datasheets (nvidia.com/en-us/data-center/dgx-b200, hgx), 2025"
_B300 = "NVIDIA HGX B300 datasheet (nvidia.com/en-us/data-center/hgx), 2025: 2.3 TB HBM3e across 8 GPUs"
_GB200 = "NVIDIA GB200 NVL72 datasheet (nvidia.com/en-us/data-center/gb200-nvl72), per GPU = rack figure / 72"
_H100 = "NVIDIA H100 Tensor Core GPU datasheet, SXM5 column (nvidia.com/en-us/data-center/h100)"
_H200 = "NVIDIA H200 Tensor Core GPU datasheet, SXM column (nvidia.com/en-us/data-center/h200)"
_GH200 = "NVIDIA GH200 Grace Hopper Superchip datasheet, 96 GB HBM3 variant (nvidia.com/en-us/data-center/grace-hopper-superchip)"
_A100 = "NVIDIA A100 Tensor Core GPU datasheet, 80GB SXM column (nvidia.com/en-us/data-center/a100)"
_L40S = "NVIDIA L40S datasheet (nvidia.com/en-us/data-center/l40s)"
_RTX_PRO_6000 = ("NVIDIA RTX PRO 6000 Blackwell Server Edition datasheet (nvidia.com/en-us/data-center/"
                 "rtx-pro-6000-blackwell-server-edition); dense = half the sparse AI TOPS")
_RTX_5090 = ("NVIDIA RTX Blackwell GPU architecture whitepaper v1.0, GeForce RTX 5090 table (FP16/BF16 with FP32 "
             "accumulate; dense = half the sparse figures)")
_CPU = "this project's CI and build machines (2 cores, 24 GB): measured order of magnitude, not a datasheet"

GPUS: dict[str, GpuProfile] = {p.name: p for p in [
    GpuProfile("b200", "blackwell", 100, 180, 8.0, 2250, 4500, 9000, "NVLink 5", 1800, 8, _B200),
    GpuProfile("b300", "blackwell", 103, 288, 8.0, 2250, 4500, 13500, "NVLink 5", 1800, 8, _B300),
    GpuProfile("gb200", "blackwell", 100, 186, 8.0, 2500, 5000, 10000, "NVLink 5 (NVL72)", 1800, 72, _GB200),
    GpuProfile("h100", "hopper", 90, 80, 3.35, 989, 1979, None, "NVLink 4", 900, 8, _H100),
    GpuProfile("h200", "hopper", 90, 141, 4.8, 989, 1979, None, "NVLink 4", 900, 8, _H200),
    GpuProfile("gh200", "hopper", 90, 96, 4.0, 989, 1979, None, "NVLink-C2C to Grace", 900, 1, _GH200),
    GpuProfile("a100-80gb", "ampere", 80, 80, 2.039, 312, None, None, "NVLink 3", 600, 8, _A100),
    GpuProfile("l40s", "ada", 89, 48, 0.864, 362, 733, None, "PCIe Gen4 x16", 64, 8, _L40S),
    GpuProfile("rtx-pro-6000", "blackwell", 120, 96, 1.792, 500, 1000, 2000, "PCIe Gen5 x16", 128, 8, _RTX_PRO_6000),
    GpuProfile("rtx-5090", "blackwell", 120, 32, 1.792, 209.5, 419, 1676, "PCIe Gen5 x16", 128, 1, _RTX_5090),
    GpuProfile("cpu", "cpu", None, 24, 0.02, 0.2, None, None, "none", 0, 1, _CPU),
]}


def get_gpu(name: str) -> GpuProfile:
    try:
        return GPUS[name]
    except KeyError:
        raise KeyError(f"unknown gpu {name!r}; valid gpus: {', '.join(GPUS)}") from None
