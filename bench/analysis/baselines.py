"""Baselines: a run's per-example scores committed as JSON lines (no weights), read back as a run by `bench gate`,
and re-run by `bench baseline check`, which shows every prediction that changed."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from bench.analysis.compare import HEAD_TO_HEAD, RunScores
from bench.machine import describe, machine, same_rounding
from bench.store import read_jsonl, write_json, write_jsonl
from bench.types import BenchError

BASELINE_FILE = "baseline.json"
# Float scores that differ by less than this are the same prediction: the local judge's probabilities differ by
# 7e-7 between a CPU with avx512_bf16 and one without (0.44491266 vs 0.44491335), every other score not at all;
# the gate reads points to two decimals, 1e-4 of a fraction.
SCORE_TOLERANCE = 1e-5


def save_baseline(results_dir: Path, run: RunScores, out_dir: Path) -> Path:
    """A run's per-example scores and outputs, metrics, identity and provenance, as JSON lines meant to be
    committed (no weights): `bench gate --baseline DIR` reads it as the baseline run."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for task, frame in run.tasks.items():
        if task.endswith(HEAD_TO_HEAD):
            continue
        rows = read_jsonl(results_dir / "runs" / run.name / task / "predictions.jsonl")
        write_jsonl(out_dir / f"{task}.jsonl", [{"id": r["id"], "score": r["score"], "output": r.get("output")}
                                                for r in rows])
    write_json(out_dir / BASELINE_FILE, {"run": run.name, "record": run.record, "machine": run.record.get("machine") or machine(),
                                         "metrics": {t: m for t, m in run.metrics.items() if not t.endswith(HEAD_TO_HEAD)}})
    return out_dir


def rounding_note(saved: dict[str, Any]) -> str | None:
    """Why a re-run here may round differently from the baseline's run; None where that ran on a machine like this."""
    here, made_on = machine(), saved["record"].get("machine") or saved.get("machine")
    if made_on and same_rounding(made_on, here):
        return None
    return (f"baseline made on {describe(made_on) if made_on else 'an unrecorded machine'}, this is {describe(here)}: "
            "float rounding may differ")


def rerun_argv(saved: dict[str, Any], results_dir: Path, data_dir: str | None) -> list[str]:
    """The `bench eval` that made a baseline, from its run record: same model, dtype, tasks, limits, generation
    settings and judge. A task the run skipped (a Hub-only task offline) is left out."""
    record, identity = saved["record"], saved["record"]["identity"]
    entries = {t: e for t, e in identity["tasks"].items() if not e.get("skipped")}
    # The limit each task was loaded with, not its n: a grouped task (mmlu) applies it to each of its subtasks.
    limits = {t: e.get("limit", identity.get("limit")) for t, e in entries.items()}
    # Drift's entry is the one that records the seed without a judge: it generates no text of its own.
    generating = {t: e["generation"] for t, e in entries.items()
                  if "generation" in e and ("judge" in e or "seed_fingerprint" not in e)}
    argv = ["eval", identity["model"], "--tasks", ",".join(entries), "--dtype", identity["dtype"],
            "--name", saved["run"], "--results-dir", str(results_dir), "--batch-size", str(record.get("batch_size", 64)),
            "--prompt-format", identity.get("prompt_format", "chat")]
    if any(limit is not None for limit in limits.values()):
        argv += ["--task-limits", ",".join(f"{t}={limit}" for t, limit in limits.items() if limit is not None)]
    if generating:
        argv += ["--max-new-tokens", ",".join(f"{t}={g['max_new_tokens']}" for t, g in generating.items())]
    temperature = max((g["temperature"] for g in generating.values()), default=0.0)
    if temperature > 0:
        argv += ["--temperature", str(temperature)]
    samples = max((e.get("samples", 1) for e in entries.values()), default=1)
    if samples > 1:
        argv += ["--samples", str(samples)]
    if (record.get("model") or {}).get("adapter"):
        argv += ["--adapter", record["model"]["adapter"]]
    judge = next((e["judge"] for e in entries.values() if "judge" in e), None)
    if judge:
        # The check compares predictions; the judge's agreement (a run of its own) is not re-measured.
        argv += ["--judge", judge["spec"], "--judge-orders", judge["orders"], "--judge-pairs", "none"]
    return argv + (["--data-dir", data_dir] if data_dir else [])


def same_score(saved: float, fresh: float) -> bool:
    """Equal, or a float within SCORE_TOLERANCE on the same side of 0.5 (a judge's verdict stays the verdict)."""
    if saved == fresh:
        return True
    return abs(saved - fresh) <= SCORE_TOLERANCE and (saved - 0.5) * (fresh - 0.5) > 0


def changed_predictions(baseline: Path, fresh: Path) -> list[str]:
    """Every example whose output or score differs between a baseline directory and a fresh run directory, each
    with its id and a short diff of the outputs. Texts and pass/fail scores compare exactly, float scores within
    SCORE_TOLERANCE, so the baseline checks on every kind of CPU."""
    import difflib

    saved, changes = read_baseline(baseline / BASELINE_FILE), []
    for task in saved["metrics"]:
        old = {r["id"]: r for r in read_jsonl(baseline / f"{task}.jsonl")}
        if not (fresh / task / "predictions.jsonl").is_file():
            changes.append(f"{task}: only in the baseline (the fresh run did not score it)")
            continue
        new = {r["id"]: r for r in read_jsonl(fresh / task / "predictions.jsonl")}
        for example in sorted(old.keys() | new.keys()):
            a, b = old.get(example), new.get(example)
            if a is None or b is None:
                changes.append(f"{task} {example}: only in the {'fresh run' if a is None else 'baseline'}")
            elif a["output"] != b.get("output") or not same_score(a["score"], b["score"]):
                diff = "\n".join(list(difflib.unified_diff((a["output"] or "").splitlines(),
                                                            (b.get("output") or "").splitlines(),
                                                            "baseline", "fresh", lineterm="", n=1))[:12])
                changes.append(f"{task} {example}: score {a['score']} -> {b['score']}" + (f"\n{diff}" if diff else ""))
    return changes


def load_baseline(path: Path) -> RunScores:
    """A committed baseline directory as a run."""
    meta = path / BASELINE_FILE
    if not meta.is_file():
        raise BenchError(f"--baseline {path}: not a baseline directory (no {BASELINE_FILE}; make one with "
                         f"`bench baseline save RUN DIR`)")
    saved = read_baseline(meta)
    tasks = {}
    for task in saved["metrics"]:
        rows = read_jsonl(path / f"{task}.jsonl")
        for line, row in enumerate(rows, start=1):
            if not isinstance(row, dict) or "id" not in row or "score" not in row:
                raise BenchError(f"{path / f'{task}.jsonl'}, line {line}: needs keys 'id' and 'score'")
            if isinstance(row["score"], bool) or not isinstance(row["score"], (int, float)):
                raise BenchError(f"{path / f'{task}.jsonl'}, line {line}: 'score' is not a number")
        tasks[task] = pd.DataFrame({"id": [r["id"] for r in rows], "score": [float(r["score"]) for r in rows],
                                    "output": [r.get("output") for r in rows]})
    return RunScores(f"baseline:{saved['run']}", saved["record"], tasks, saved["metrics"])


def read_baseline(meta: Path) -> dict[str, Any]:
    """A baseline.json with the keys a gate and a re-run read; a missing one is named, with the file."""
    try:
        saved = json.loads(meta.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise BenchError(f"{meta}: not readable JSON ({e})") from None
    if not isinstance(saved, dict):
        raise BenchError(f"{meta}: expected a JSON object, got {type(saved).__name__}")
    for key, kind in (("run", str), ("record", dict), ("metrics", dict)):
        if key not in saved:
            raise BenchError(f"{meta}: missing key {key!r} (baselines are written by `bench baseline save RUN DIR`)")
        if not isinstance(saved[key], kind):
            raise BenchError(f"{meta}: key {key!r} must be a JSON {'string' if kind is str else 'object'}")
    if not isinstance(saved["record"].get("identity"), dict):
        raise BenchError(f"{meta}: missing key 'record.identity' (the run's identity, from its run.json)")
    for task in saved["metrics"]:
        if not (meta.parent / f"{task}.jsonl").is_file():
            raise BenchError(f"{meta}: task {task!r} in 'metrics' has no {task}.jsonl beside it")
    return saved
