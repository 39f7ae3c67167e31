"""What this machine's CPU computes natively: its vector instruction set as oneDNN sees it, and
whether it has the 16-bit float units that make --mixed_precision pay off on a CPU."""

import functools
import os
from typing import Dict, Optional

import tensorflow as tf
from absl import logging

# The CPU flags (as in /proc/cpuinfo) of units that compute each 16-bit type natively. Without
# them TF emulates the type: on the CPUs measured that lack them, AVX-512 and AVX2 alike, the
# bfloat16 step was several times slower than float32 (docs/performance.md).
NATIVE_UNITS = {"bfloat16": ("avx512_bf16", "amx_bf16"), "float16": ("avx512_fp16", "amx_fp16")}
# The dtype layers compute in under each --mixed_precision (the benchmark's limit is its GEMM).
COMPUTE_DTYPES = {"none": "float32", "mixed_float16": "float16", "mixed_bfloat16": "bfloat16"}


@functools.lru_cache(maxsize=None)
def _first_cpu() -> Optional[Dict[str, str]]:
    """The fields of /proc/cpuinfo's first processor, or None where there is none (not Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            block = cpuinfo.read().split("\n\n")[0]
    except OSError:
        return None
    return {key.strip(): value.strip() for key, value in
            (line.split(":", 1) for line in block.splitlines() if ":" in line)}


def cpu_flags() -> Optional[frozenset]:
    """The CPU's feature flags from /proc/cpuinfo, or None where there is none."""
    fields = _first_cpu()
    return None if fields is None else frozenset(fields.get("flags", "").split())


def cpu_model() -> Optional[str]:
    """The CPU's model name from /proc/cpuinfo ("" if it has none), or None where there is none."""
    fields = _first_cpu()
    return None if fields is None else fields.get("model name", "")


def cpu_isa(flags: Optional[frozenset] = None) -> str:
    """The CPU's vector instruction set as oneDNN sees it (ONEDNN_MAX_CPU_ISA caps it)."""
    flags = cpu_flags() if flags is None else flags
    if flags is None:
        return "unknown (no /proc/cpuinfo)"
    avx512 = sorted(f for f in flags if f.startswith("avx512"))
    isa = ("AVX-512 (" + " ".join(avx512) + ")" if avx512 else
           "AVX2/FMA (no AVX-512)" if {"avx2", "fma"} <= flags else "below AVX2")
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA")
    return f"{isa}; oneDNN capped at {cap}" if cap else isa


def slow_mixed_precision(policy: str, flags: Optional[frozenset], has_gpu: bool) -> Optional[str]:
    """Why `policy` (--mixed_precision) will train slower than float32 here, or None.

    Only for CPU runs whose CPU lacks the policy's 16-bit units; a GPU, or a CPU whose flags
    are unknown, gets no warning (it may have them).
    """
    dtype = COMPUTE_DTYPES.get(policy)
    if dtype not in NATIVE_UNITS or has_gpu or flags is None or set(NATIVE_UNITS[dtype]) & flags:
        return None
    units = " or ".join(unit.upper() for unit in NATIVE_UNITS[dtype])
    return (f"--mixed_precision={policy} on a CPU without {units} ({cpu_isa(flags)}): TF "
            f"emulates {dtype} here, so training is several times slower than in float32 "
            f"(docs/performance.md). Use --mixed_precision=none on this machine.")


def warn_if_slow_mixed_precision(policy: str) -> None:
    """Log slow_mixed_precision's warning for this process's devices, if it has one."""
    message = slow_mixed_precision(policy, cpu_flags(),
                                   bool(tf.config.list_logical_devices("GPU")))
    if message:
        logging.warning("%s", message)
