"""Knowledge tasks' log-likelihoods: our engine (`bench.evaluation.lmeval.engine_lm`) against lm-eval's own `hf`
backend, on the same lm-eval task configs and documents (the mirror's ARC-Easy and MMLU).

Each backend runs in its own process (so each peak RSS is its own), capped at --memory-gb of address space so a
backend that would exhaust the machine fails with "out of memory" instead of taking the machine down. Printed per
task and dtype: wall seconds, peak RSS, accuracy, and, against the hf backend's, how many answers are equal and
the largest log-likelihood difference. The product ran the hf backend at --batch-size 64 before the engine.

    .venv/bin/python benchmarks/knowledge.py [--model default] [--data-dir DIR] [--limits arc_easy=200,mmlu=10]
        [--dtypes float32,bfloat16] [--hf-batch-sizes 64,8] [--memory-gb 20]

A limit is lm-eval's: documents per leaf task (MMLU: per subject, 57 subjects). Quote ratios measured in one run.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_backend(backend: str, model_spec: str, dtype: str, task_name: str, data_dir: Path, limit: int) -> dict:
    """One backend on one task, in this process: lm-eval's per-document log-likelihoods, accuracy and the cost."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    import tasks.knowledge as knowledge
    from bench.evaluation.lmeval import engine_lm, write_configs
    from bench.generation.engine import Engine
    from bench.generation.models import load_model

    model = load_model(model_spec, dtype=dtype)
    if backend == "engine":
        lm = engine_lm(model, Engine(model))
    else:
        from lm_eval.models.huggingface import HFLM

        lm = HFLM(pretrained=model.model, tokenizer=model.tokenizer, batch_size=int(backend.removeprefix("hf-")),
                  dtype=model.dtype, device="cpu")
    task = getattr(knowledge, task_name)
    with tempfile.TemporaryDirectory() as tmp:
        names = write_configs([task], data_dir, Path(tmp))
        started = time.perf_counter()
        out = simple_evaluate(model=lm, tasks=names, task_manager=TaskManager(include_path=tmp, include_defaults=False),
                              limit=limit, log_samples=True)
        seconds = time.perf_counter() - started
    lls = {f"{name}/{s['doc_id']}": [float(r[0]) for r in s["filtered_resps"]]
           for name in names for s in out["samples"][name]}
    correct = [float(s["acc"]) for name in names for s in out["samples"][name]]
    return {"seconds": seconds, "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "accuracy": sum(correct) / len(correct), "n": len(correct), "loglikelihoods": lls}


def in_subprocess(args: argparse.Namespace, backend: str, dtype: str, task: str) -> dict:
    command = [sys.executable, __file__, "--child", backend, "--model", args.model, "--dtypes", dtype, "--limits", task,
               "--memory-gb", str(args.memory_gb)] + \
              (["--data-dir", args.data_dir] if args.data_dir else [])
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["?"]
        return {"failed": "out of memory" if "MemoryError" in done.stderr or "memory" in tail[0].lower() else tail[0]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--data-dir")
    parser.add_argument("--limits", default="arc_easy=200,mmlu=10", help="TASK=DOCUMENTS per leaf, comma-separated")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--hf-batch-sizes", default="64,8")
    parser.add_argument("--memory-gb", type=float, default=20.0)
    parser.add_argument("--child")
    args = parser.parse_args()
    from bench.data import resolve_data_dir
    from bench.memory import keep_freed_memory

    keep_freed_memory()  # as the bench CLI does: the peers run under the same allocator settings

    data_dir = resolve_data_dir(args.data_dir)
    if args.child:
        limit = int(args.memory_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        task, limit = args.limits.split("=")
        print(json.dumps(run_backend(args.child, args.model, args.dtypes, task, data_dir, int(limit))))
        return
    from bench.machine import describe, machine

    print(f"machine: {describe(machine())}")
    backends = ["engine"] + [f"hf-{b}" for b in args.hf_batch_sizes.split(",")]
    for dtype in args.dtypes.split(","):
        for task in args.limits.split(","):
            results = {b: in_subprocess(args, b, dtype, task) for b in backends}
            reference = next((results[b] for b in backends[1:] if "failed" not in results[b]), None)
            print(f"\n{task.replace('=', ', limit ')} per leaf, {dtype}:")
            print("| backend | n | accuracy | seconds | x the engine | peak RSS GB | answers equal to hf | max |Δ ll| |")
            print("|---|---|---|---|---|---|---|---|")
            engine = results["engine"]
            for backend, r in results.items():
                if "failed" in r:
                    print(f"| {backend} | | | | | | | {r['failed']} |")
                    continue
                equal, diff = "", ""
                if reference is not None and r is not reference:
                    pairs = [(r["loglikelihoods"][k], reference["loglikelihoods"][k]) for k in reference["loglikelihoods"]]
                    argmax = lambda v: max(range(len(v)), key=v.__getitem__)
                    equal = f"{sum(argmax(a) == argmax(b) for a, b in pairs)}/{len(pairs)}"
                    diff = f"{max(abs(x - y) for a, b in pairs for x, y in zip(a, b)):.2e}"
                ratio = f"{r['seconds'] / engine['seconds']:.2f}" if "failed" not in engine else ""
                print(f"| {backend} | {r['n']} | {100 * r['accuracy']:.2f} | {r['seconds']:.1f} | {ratio} | "
                      f"{r['peak_rss_gb']:.2f} | {equal} | {diff} |")


if __name__ == "__main__":
    main()
