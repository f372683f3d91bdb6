"""bench/machine.py: what a run records of the machine that computed it, and when two records round alike."""
from __future__ import annotations

import torch

from bench.machine import describe, machine, same_rounding

XEON = {"cpu": "Intel(R) Xeon(R) Processor", "cpuid": "6/143/8", "cache": "107520 KB", "arch": "x86_64", "simd": ["amx_bf16", "avx2", "avx512_bf16", "avx512f"],
        "threads": 2, "gpu": None}


def test_this_machine_is_recorded_with_torchs_thread_count():
    here = machine()
    assert here["threads"] == torch.get_num_threads()
    assert here["gpu"] == (torch.cuda.get_device_name() if torch.cuda.is_available() else None)
    assert set(here["simd"]) <= {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "fma"}
    assert same_rounding(here, dict(here))


def test_another_cpu_thread_count_or_vector_unit_rounds_differently():
    assert not same_rounding(XEON, XEON | {"cpu": "AMD EPYC 9R14"})
    assert not same_rounding(XEON, XEON | {"cpuid": "6/207/2"})  # another generation under the same virtual name
    assert not same_rounding(XEON, XEON | {"cache": "32768 KB"})  # oneDNN sizes its blocks by it
    unnamed = {"cpu": "?", "arch": "x86_64", "simd": []}  # an ARM /proc/cpuinfo has no model name
    assert not same_rounding(unnamed, unnamed | {"arch": "aarch64"})
    assert not same_rounding(XEON, XEON | {"threads": 1})  # oneDNN splits its sums by thread
    assert not same_rounding(XEON, XEON | {"simd": ["avx2", "avx512f"]})  # no native bf16
    assert not same_rounding(XEON, XEON | {"gpu": "NVIDIA H200"})


def test_a_record_from_before_threads_were_recorded_is_compared_on_what_it_has():
    old = {"cpu": XEON["cpu"], "arch": "x86_64", "simd": XEON["simd"]}
    assert same_rounding(old, XEON) and same_rounding(XEON, old)
    assert not same_rounding(old | {"simd": ["avx2"]}, XEON)


def test_describe_is_one_line_with_cpu_threads_and_flags():
    assert describe(XEON) == "Intel(R) Xeon(R) Processor (CPUID 6/143/8), 2 threads, amx_bf16 avx2 avx512_bf16 avx512f"
    assert describe(XEON | {"simd": [], "gpu": "NVIDIA H200"}).endswith("no avx2/avx512, GPU NVIDIA H200")
    assert describe({"cpu": "AMD EPYC", "simd": ["avx2"]}) == "AMD EPYC, avx2"  # a record without threads
