"""The machine a number was measured on: the CPU, its vector instructions and the threads torch computes with decide
how floats round (bf16 most of all: a run on another CPU may part from this one's outputs mid-text)."""
from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

SIMD_FLAGS = {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "fma"}


def machine() -> dict[str, Any]:
    """The CPU's model name, its CPUID family/model/stepping and cache size (virtual machines name different CPUs
    alike; oneDNN sizes its blocks by the cache), the architecture, the SIMD flags among SIMD_FLAGS, torch's thread
    count and the GPU's name (None without one)."""
    import torch

    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        info = ""
    fields: dict[str, str] = {}
    for line in info.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    cpuid = "/".join(fields.get(k, "?") for k in ("cpu family", "model", "stepping"))
    return {"cpu": fields.get("model name", "?"), "cpuid": cpuid, "cache": fields.get("cache size"),
            "arch": platform.machine(), "simd": sorted(set(fields.get("flags", "").split()) & SIMD_FLAGS),
            "threads": torch.get_num_threads(), "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def describe(found: dict[str, Any]) -> str:
    """One line: `Intel(R) Xeon(R) Processor (CPUID 6/143/8), 2 threads, amx_bf16 avx2 avx512_bf16 avx512f fma`."""
    simd = " ".join(found.get("simd") or []) or "no avx2/avx512"
    threads = found.get("threads")
    threads = "" if threads is None else f", {threads} thread{'' if threads == 1 else 's'}"
    gpu = f", GPU {found['gpu']}" if found.get("gpu") else ""
    cpuid = f" (CPUID {found['cpuid']})" if found.get("cpuid") else ""
    return f"{found.get('cpu', '?')}{cpuid}{threads}, {simd}{gpu}"


def same_rounding(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two machines compute the same floats: the same architecture, CPU (name, CPUID, cache), SIMD flags,
    thread count and GPU, each compared where both records have it (records before 2026-12-05 have the name, the
    architecture and the flags only)."""
    keys = ("arch", "cpu", "cpuid", "cache", "simd", "threads", "gpu")
    return all(a[k] == b[k] for k in keys if k in a and k in b)
