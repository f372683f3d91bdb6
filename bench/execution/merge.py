"""`bench merge`: one run from the partial runs of its shards (`bench eval --shard I/N`, or the ranks of a launcher).

The shards must be of one evaluation (the same identity but for the shard: model fingerprint, adapter hash, data
hashes, generation, judge and sandbox settings; and the same commit), complete, and together every shard once.
Their rows are put back in the order one process writes them and each task's metrics are computed from the rows by
the runner's own functions, so the merged run equals the run made whole in one process (timings aside: each task's
is the sum of its shards').
"""
from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

from bench.distributed import unshard
from bench.evaluation.lmeval import reported_from_rows
from bench.execution.runner import MODEL_OUTPUTS, drift_metrics, harness_metrics, judged_metrics, task_metrics
from bench.store import RunStore, read_jsonl
from bench.types import BenchError, GenerationConfig, HarnessTask, Task


def read_parts(parts: list[RunStore]) -> list[dict[str, Any]]:
    """Each part's run.json, in shard order, after checking that they are one evaluation's shards, all there."""
    runs = []
    for part in parts:
        run = part.read_run()
        if run is None:
            raise BenchError(f"run {part.name}: no such run in {part.dir.parent}")
        if not run.get("complete"):
            raise BenchError(f"run {part.name} is not complete: finish its shard first (re-run the same command)")
        if "shard" not in run["identity"]:
            raise BenchError(f"run {part.name} is not a shard (bench eval --shard I/N writes one)")
        runs.append(run)
    first = runs[0]
    for run in runs[1:]:
        ours, theirs = ({k: v for k, v in r["identity"].items() if k != "shard"} for r in (first, run))
        if ours != theirs or (first.get("git") or {}).get("commit") != (run.get("git") or {}).get("commit"):
            changed = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k)) or ["git commit"]
            raise BenchError(f"runs {first['name']} and {run['name']} are shards of different evaluations "
                             f"({', '.join(changed)} differ)")
    count = first["identity"]["shard"]["count"]
    by_index: dict[int, str] = {}
    for run in runs:
        shard = run["identity"]["shard"]
        if shard["count"] != count:
            raise BenchError(f"runs {first['name']} and {run['name']} split the examples into {count} and "
                             f"{shard['count']} shards")
        if shard["index"] in by_index:
            raise BenchError(f"shard {shard['index']}/{count} given twice ({by_index[shard['index']]}, {run['name']})")
        by_index[shard["index"]] = run["name"]
    missing = [f"{i}/{count}" for i in range(count) if i not in by_index]
    if missing:
        raise BenchError(f"shard {', '.join(missing)} missing: evaluate it with --shard and merge again")
    return sorted(runs, key=lambda run: run["identity"]["shard"]["index"])


def merge_runs(parts: list[RunStore], store: RunStore,
               tasks: dict[str, Task | HarnessTask]) -> dict[str, dict[str, Any]]:
    """Write the merged run (or find it already merged); returns each task's metrics."""
    runs = read_parts(parts)
    by_name = {part.name: part for part in parts}
    parts = [by_name[run["name"]] for run in runs]  # in shard order
    identity = {k: v for k, v in runs[0]["identity"].items() if k != "shard"}
    names = list(identity["tasks"])
    if store.finished_with(identity):
        return {name: json.loads((store.dir / name / "metrics.json").read_text()) for name in names}
    record = {**runs[0], "name": store.name, "identity": identity, "shards": [r["name"] for r in runs],
              "timings": {name: round(sum(r["timings"].get(name, 0.0) for r in runs), 3) for name in names},
              "peak_rss_mib": {name: max(r["peak_rss_mib"].get(name, 0.0) for r in runs) for name in names},
              "started": min(r["started"] for r in runs),
              "shard_machines": [r.get("machine") for r in runs]}  # each shard's: launchers may span hosts
    record["timings"]["total"] = round(sum(record["timings"][name] for name in names), 3)
    record.pop("complete", None)
    store.begin(record)
    results = {}
    for name in names:
        rows = unshard([read_jsonl(part.dir / name / "predictions.jsonl") for part in parts])
        if len(rows) != identity["tasks"][name]["n"]:
            raise BenchError(f"task {name}: the shards hold {len(rows)} rows, the evaluation {identity['tasks'][name]['n']}")
        per_shard = [json.loads((part.dir / name / "metrics.json").read_text()) for part in parts]
        metrics = merged_metrics(tasks[name], rows, per_shard, store.name)
        store.write_task(name, rows, metrics)
        if isinstance(tasks[name], Task) and tasks[name].judged:
            outputs = unshard([json.loads((part.dir / name / MODEL_OUTPUTS).read_text()) for part in parts])
            store.write_json_file(name, MODEL_OUTPUTS, [{**row, "generator": store.name} for row in outputs])
        results[name] = metrics
    store.finish({**record, "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    return results


def merged_metrics(task: Task | HarnessTask, rows: list[dict[str, Any]], per_shard: list[dict[str, Any]],
                   generator: str) -> dict[str, Any]:
    """The task's metrics from the merged rows (`per_shard`: each shard's metrics.json, in shard order), by the
    function the runner computes them with."""
    shard_metrics = per_shard[0]
    if isinstance(task, HarnessTask):
        if "skipped" in shard_metrics:
            return shard_metrics
        reported = {"results": {}, "n-shot": {}}  # every leaf some shard evaluated
        for theirs in (m["lm_eval"] for m in per_shard):
            reported["results"].update(theirs["results"])
            reported["n-shot"].update(theirs["n-shot"])
        return harness_metrics(task, rows, reported_from_rows(rows, task.metric, reported))
    task = replace(task, generation=GenerationConfig(**shard_metrics["generation"]))
    if task.drift:
        return drift_metrics(task, rows, shard_metrics["seed_fingerprint"])
    if task.judged:
        pairs = [m["n"] * (2 if "vs_seed" in m else 1) for m in per_shard]
        seconds = sum(m["seconds_per_pair"] * n for m, n in zip(per_shard, pairs)) / sum(pairs)
        metrics = judged_metrics(task, rows, shard_metrics["judge"], generator,
                                 shard_metrics.get("vs_seed", {}).get("seed_fingerprint"), seconds)
        return {**metrics, "judge_agreement": shard_metrics["judge_agreement"]}
    return task_metrics(task, rows, shard_metrics["samples"])

