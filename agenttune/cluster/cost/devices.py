"""Accelerators: dense bf16 peak and memory of the GPUs the estimates know.

Takes: a device name (`GPUS`), optionally with its peak FLOP/s and memory overridden.
Gives: `GPU`, `GPUS`, `get_gpu`, and the byte units (GiB, MiB) the cost package prints in.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

GiB = 2**30
MiB = 2**20


@dataclass(frozen=True)
class GPU:
    name: str
    peak_flops: float   # dense bf16 tensor-core peak, FLOP/s, no sparsity
    memory_bytes: int   # what nvidia-smi reports as total
    per_node: int = 8
    memory_bandwidth: float = 2.0e12  # bytes/s, the datasheet's HBM figure (decode reads every weight each step)

    @property
    def memory_gib(self) -> float:
        return self.memory_bytes / GiB


GPUS: dict[str, GPU] = {
    "a100-80g": GPU("A100-80G", 312e12, 81920 * MiB, memory_bandwidth=2.039e12),
    "a100-40g": GPU("A100-40G", 312e12, 40960 * MiB, memory_bandwidth=1.555e12),
    "h100-80g": GPU("H100-80G SXM", 989e12, 81559 * MiB, memory_bandwidth=3.35e12),
    "h200": GPU("H200 SXM", 989e12, 143771 * MiB, memory_bandwidth=4.8e12),
    # Placeholder for CPU smoke runs: set the peak and memory to the machine's (get_gpu overrides).
    "cpu": GPU("CPU", 1e12, 64 * GiB, per_node=1, memory_bandwidth=50e9),
}


def get_gpu(name: str | GPU, peak_flops: float | None = None, memory_gib: float | None = None) -> GPU:
    gpu = name if isinstance(name, GPU) else GPUS.get(name.lower())
    if gpu is None:
        raise ValueError(f"unknown gpu {name!r}; known: {', '.join(GPUS)}")
    if peak_flops is not None:
        gpu = replace(gpu, peak_flops=float(peak_flops))
    if memory_gib is not None:
        gpu = replace(gpu, memory_bytes=int(memory_gib * GiB))
    return gpu
