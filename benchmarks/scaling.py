"""One process with N threads against N processes of one thread each (torchrun), side by side in one run: the tiny
study's evaluation of its seed and its SFT training, each from a cold results directory, with the outputs checked
equal (the same rows' texts, scores within 1e-5; the same loss per step within 1e-4).

    .venv/bin/python benchmarks/scaling.py --data-dir ../shared/data [--processes 2] [--dtype auto]

Printed: wall seconds of each (model loading and process start included), the speed-up of the processes, and
how many outputs agree. On 2 cores it says how much the engine's own threading already takes; the estimate for
8 GPUs is a multiplication, printed as one and labelled so.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TASKS = "gsm8k,advbench_raw,humaneval,openfunction,arc_easy,ifeval,drift"  # profiles/tiny.toml's
LIMITS = "gsm8k=8,advbench_raw=8,humaneval=16,openfunction=64,arc_easy=300,ifeval=96,drift=32"
SFT = {"learning_rate": 1e-3, "rank": 16, "batch_size": 2, "gradient_accumulation": 4, "epochs": 1.0,
       "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}


def launch(processes: int, threads: int, argv: list[str]) -> float:
    """Wall seconds of `bench ARGV` in `processes` processes of `threads` threads each."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"] \
        if processes > 1 else [sys.executable]
    started = time.perf_counter()
    done = subprocess.run([*launcher, "-m", "bench", *argv], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    if done.returncode != 0:
        sys.exit(f"bench {' '.join(argv[:2])} failed in {processes} processes:\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def rows(results: Path, name: str) -> dict[str, list[dict]]:
    run_dir = results / "runs" / name
    tasks = json.loads((run_dir / "run.json").read_text())["identity"]["tasks"]
    return {t: [json.loads(line) for line in (run_dir / t / "predictions.jsonl").read_text().splitlines()]
            for t in tasks}


def agreement(ours: dict[str, list[dict]], theirs: dict[str, list[dict]]) -> dict[str, str]:
    """Per task, how many rows have the same output text and a score within 1e-5 (in bf16 a batch of another
    make-up rounds otherwise, and greedy decoding can turn on it; in float32 the tests find every row equal)."""
    counts = {}
    for task, rows_a in ours.items():
        same = sum(a.get("output") == b.get("output") and abs(a["score"] - b["score"]) <= 1e-5
                   for a, b in zip(rows_a, theirs.get(task, [])))
        counts[task] = f"{same}/{len(rows_a)}"
    return counts


def losses(checkpoint: Path) -> list[float]:
    return [float(r["loss"]) for r in csv.DictReader((checkpoint / "train_log.csv").open())]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--work-dir", help="where the runs and checkpoints go (default: a temporary directory)")
    args = parser.parse_args()
    n = args.processes
    with tempfile.TemporaryDirectory(prefix="forgetbench-scaling-") as tmp:
        tmp_path = Path(args.work_dir or tmp)
        tmp_path.mkdir(parents=True, exist_ok=True)
        config = tmp_path / "sft.json"
        config.write_text(json.dumps(SFT))
        seconds: dict[tuple[str, int], float] = {}
        for processes, threads in ((1, n), (n, 1)):
            results = tmp_path / f"p{processes}"
            seconds["eval", processes] = launch(processes, threads, [
                "eval", "default", "--tasks", TASKS, "--task-limits", LIMITS, "--max-new-tokens", "ifeval=192",
                "--data-dir", args.data_dir, "--results-dir", str(results), "--dtype", args.dtype, "--name", "seed"])
            seconds["train", processes] = launch(processes, threads, [
                "train", "sft", "--task", "openfunction", "--limit", "100", "--config", str(config), "--data-dir",
                args.data_dir, "--results-dir", str(results), "--dtype", args.dtype, "--name", "sft"])
        same = agreement(rows(tmp_path / "p1", "seed"), rows(tmp_path / f"p{n}", "seed"))
        one, many = (losses(tmp_path / f"p{p}" / "checkpoints" / "sft") for p in (1, n))
        loss_gap = max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(one, many))
    print(f"machine: {os.cpu_count()} cores; dtype {args.dtype}; the embedded model (SmolLM2-135M-Instruct)")
    for stage, what in (("eval", f"the tiny study's seed evaluation ({TASKS})"),
                        ("train", "SFT on 100 openfunction examples, one epoch, global batch 8")):
        single, split = seconds[stage, 1], seconds[stage, n]
        print(f"{what}:\n  1 process x {n} threads: {single:.1f} s; {n} processes x 1 thread: {split:.1f} s; "
              f"speed-up {single / split:.2f}x")
    print("outputs: rows with the same text and score, per task: " + ", ".join(f"{t} {c}" for t, c in same.items())
          + f"; SFT losses per step within {loss_gap:.1e} relative ({len(one)} and {len(many)} steps)")


if __name__ == "__main__":
    main()
