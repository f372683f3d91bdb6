"""`bench`: the command line. The top floor: the only module of bench/ that imports tasks/ and fine_tune/."""
from __future__ import annotations

import argparse

import json
import os
import re
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.generation.models import DTYPES, PROMPT_FORMATS
from bench.memory import keep_freed_memory
from bench.store import RunStore, check_plain_name
from fine_tune import METHODS
from bench.types import BenchError, HarnessTask, Task

DEFAULT_RESULTS_DIR = Path("results")
JUDGE_HELP = "qwen2.5-coder-1.5b-instruct, installed by `make judge`"
PROMPT_FORMAT_HELP = ("chat (default): every prompt through the model's chat template; study: the Alpaca-template "
                      "tasks as the sdft repository sends them, plain text, and math through the chat template")


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def _non_negative_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not number >= 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    if number == float("inf"):
        raise argparse.ArgumentTypeError(f"must be finite, got {value}")
    return number


def _unit_float(value: str) -> float:
    number = _non_negative_float(value)
    if number > 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value}")
    return number


def _positive_float(value: str) -> float:
    number = _non_negative_float(value)
    if number == 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {value}")
    return number


def _per_task(value: str, number) -> dict[str, Any]:
    """`TASK=N,...` with each N read by `number`."""
    values = {}
    for item in _csv(value):
        task, sep, text = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"expected TASK=NUMBER, got {item!r}")
        values[task.strip()] = number(text)
    return values


def _task_limits(value: str) -> dict[str, int]:
    return _per_task(value, _positive_int)


def default_run_name(model: str, adapter: str | None) -> str:
    def slug(spec: str) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(spec.rstrip("/")).name or spec).strip("-.") or "model"
    return slug(model) + (f"+{slug(adapter)}" if adapter else "")


def cmd_eval(args: argparse.Namespace, console: Console) -> None:
    from bench.data import load_task_data, resolve_data_dir
    from bench.distributed import Shard, barrier
    from bench.evaluation.lmeval import load_harness_data
    from bench.execution.merge import merge_runs
    from bench.execution.runner import evaluate, judge_agreement
    from bench.generation.cache import Cache
    from tasks import TASKS

    tasks = _selected_tasks(args)
    data_dir = resolve_data_dir(args.data_dir)
    task_limits = getattr(args, "task_limits", None) or {}
    data = {t.name: (load_task_data if isinstance(t, Task) else load_harness_data)(
        t, data_dir, task_limits.get(t.name, args.limit)) for t in tasks}
    results_dir = Path(args.results_dir)
    name = args.name or default_run_name(args.model, args.adapter)
    RunStore(results_dir, name)  # the name's rules, before any shard's name is made from it
    w, shard = _eval_shard(args, data)
    store = RunStore(results_dir, shard.run_name(name) if shard else name)
    store.check_writable()
    started = time.perf_counter()
    prompt_format = args.prompt_format
    trained_with = _adapter_prompt_format(args.adapter)
    if trained_with not in (None, prompt_format):
        console.print(f"[yellow]--adapter {args.adapter} was trained with {trained_with} prompts; this evaluation "
                      f"sends {prompt_format} prompts (--prompt-format)[/yellow]")
    cache = Cache(results_dir / "cache" / "generations.sqlite")
    judge = _judge(args, cache) if any(isinstance(t, Task) and t.judged for t in tasks) else None
    model, engine, sandbox, harness, seed = _eval_machinery(args, tasks, cache, data_dir, console)
    judge_pairs = _judge_pairs(args, data_dir) if judge else None
    if judge and w.size > 1:  # rank 0 measures the judge's agreement (when it is not yet) before any rank reads it
        if w.main:
            judge_agreement(judge, results_dir, judge_pairs)
        barrier(w)
    metrics = evaluate(model, engine, tasks, data, store, args.limit, sandbox, args.samples, harness, seed, judge,
                       judge_pairs, shard)
    if w.size > 1:  # rank 0 merges the ranks' shards into the run
        barrier(w)
        if not w.main:
            return
        store = RunStore(results_dir, name)
        metrics = merge_runs([RunStore(results_dir, Shard(r, w.size).run_name(name)) for r in range(w.size)], store,
                             TASKS)
    title = f"run {store.name}: {model.spec} ({model.dtype}, fingerprint {model.fingerprint})"
    console.print(_metrics_table(title, metrics))
    from bench.analysis.compare import judge_agreements
    from bench.analysis.report import judge_lines

    for line in judge_lines(judge_agreements([metrics])) if judge else ():
        console.print(f"judge: {line}", markup=False, highlight=False)
    console.print(f"results: {store.dir}  ({time.perf_counter() - started:.1f} s)")


def _eval_machinery(args: argparse.Namespace, tasks: list[Task | HarnessTask], cache, data_dir: Path | None,
                    console: Console) -> tuple:
    """The model and its engine, and what the tasks need beside them: the sandbox, lm-eval's harness, the seed
    (drift and the judge's head-to-head compare with it)."""
    from bench.evaluation.lmeval import Harness
    from bench.execution.sandbox import Sandbox, isolation_notes
    from bench.generation.engine import Engine
    from bench.generation.models import load_model

    model = load_model(args.model, args.adapter, args.dtype, args.prompt_format)
    engine = Engine(model, cache, batch_size=args.batch_size)
    sandbox = Sandbox(workers=args.workers) if any(isinstance(t, Task) and t.program for t in tasks) else None
    harness = Harness(model, engine, Path(args.results_dir) / "cache", data_dir) \
        if any(isinstance(t, HarnessTask) for t in tasks) else None
    if sandbox is not None and sandbox.isolation != "namespaces":
        console.print(f"[yellow]sandbox: {isolation_notes(sandbox.isolation)}[/yellow]")
    seed = None
    if any(isinstance(t, Task) and (t.drift or t.judged) for t in tasks):
        seed_model = model if args.adapter is None else load_model(args.model, None, args.dtype, args.prompt_format)
        seed = (seed_model, engine if seed_model is model else Engine(seed_model, cache, batch_size=args.batch_size))
    return model, engine, sandbox, harness, seed


def _eval_shard(args: argparse.Namespace, data: dict) -> tuple:
    """This process's world and the shard it evaluates: --shard I/N, or its rank's under a launcher; a shard
    that would hold no example of some task is an error."""
    from bench.distributed import Shard, parse_shard, world

    shard = parse_shard(args.shard) if getattr(args, "shard", None) else None
    w = world()
    if w.size > 1:
        if shard is not None:
            raise BenchError(f"--shard {args.shard}: under a launcher each of the {w.size} processes evaluates its "
                             f"own shard; drop --shard")
        shard = Shard(w.rank, w.size)
    for name, loaded in data.items() if shard else ():
        if 0 < len(loaded.examples) < shard.count:
            raise BenchError(f"{shard.count} shards but task {name} has {len(loaded.examples)} examples: every "
                             f"shard needs at least one (use fewer processes or shards)")
    return w, shard


def cmd_merge(args: argparse.Namespace, console: Console) -> None:
    from bench.execution.merge import merge_runs
    from tasks import TASKS

    results_dir = Path(args.results_dir)
    store = RunStore(results_dir, args.name)
    store.check_writable()
    metrics = merge_runs([RunStore(results_dir, name) for name in args.runs], store, TASKS)
    console.print(_metrics_table(f"run {store.name}: merged from {len(args.runs)} shards", metrics))
    console.print(f"results: {store.dir}")


def _selected_tasks(args: argparse.Namespace) -> list[Task | HarnessTask]:
    """The tasks of --suite and --tasks with --temperature and --max-new-tokens applied; options naming a task not
    selected, or one that generates nothing, are errors."""
    from tasks import TASKS, select_tasks

    if not args.suite and not args.tasks:
        raise BenchError("give --suite or --tasks (see `bench tasks`)")
    tasks = select_tasks(args.suite, args.tasks)
    if args.temperature is not None:
        tasks = [replace(t, generation=replace(t.generation, temperature=args.temperature))
                 if isinstance(t, Task) and not t.drift else t for t in tasks]
    if args.samples > 1 and not args.temperature:
        raise BenchError("--samples above 1 needs --temperature above 0 (greedy samples are all the same)")
    task_limits = getattr(args, "task_limits", None) or {}
    token_caps = getattr(args, "max_new_tokens", None) or {}
    for option, values in (("--task-limits", task_limits), ("--max-new-tokens", token_caps)):
        unknown = sorted(set(values) - {t.name for t in tasks})
        if unknown:
            raise BenchError(f"{option}: {', '.join(unknown)} not among the selected tasks")
    uncapped = sorted(name for name in token_caps if not isinstance(TASKS[name], Task) or TASKS[name].drift)
    if uncapped:
        raise BenchError(f"--max-new-tokens: {', '.join(uncapped)} generates no text of its own")
    tasks = [replace(t, generation=replace(t.generation, max_new_tokens=token_caps[t.name]))
             if t.name in token_caps else t for t in tasks]
    return tasks


def _metrics_table(title: str, metrics: dict[str, dict[str, Any]]) -> Table:
    from bench.analysis.compare import scale

    table = Table(title=title)
    for column in ("task", "metric", "n", "score", "95% CI"):
        table.add_column(column, justify="left" if column in ("task", "metric") else "right")
    for name, m in metrics.items():
        if "skipped" in m:
            table.add_row(name, m["metric"], "0", "skipped", m["skipped"])
            continue
        k = scale(m["metric"])  # others share their task's scale (drift: KL and NLL, both in nats)
        extra = "".join(f"  {name_} {100 * v:.2f}" for name_, v in m.get("pass@k", {}).items() if name_ != "pass@1")
        extra += "".join(f"  {name_} {k * v['mean']:.2f}" for name_, v in m.get("others", {}).items())
        table.add_row(name, m["metric"], str(m["n"]), f"{k * m['mean']:.2f}{extra}",
                      f"[{k * m['ci_low']:.2f}, {k * m['ci_high']:.2f}]")
    return table


def _judge(args: argparse.Namespace, cache):
    """The judge of judged tasks, checked before any generation: a local model that loads, or an API that answers."""
    from bench.generation.engine import Engine
    from bench.evaluation.judge import DEFAULT_JUDGE, local_model_spec, Judge
    from bench.generation.models import load_model

    spec = getattr(args, "judge", None) or DEFAULT_JUDGE
    orders = getattr(args, "judge_orders", None) or "both"
    if local_model_spec(spec) is None:
        judge = Judge(spec, orders, cache=cache)
        judge.check()
        return judge
    try:
        model = load_model(local_model_spec(spec), None, args.dtype)
    except BenchError as e:
        raise BenchError(f"--judge {spec}: {e}") from None
    return Judge(spec, orders, model, Engine(model, None, batch_size=args.batch_size), cache)


def _judge_pairs(args: argparse.Namespace, data_dir: Path | None) -> Path | None:
    """Where a judge without an agreement run gets one measured: --judge-pairs, or the mirror's balanced set."""
    from bench.evaluation.agreement import BALANCED_SET

    option = getattr(args, "judge_pairs", None)
    if option == "none":
        return None
    if option is not None:
        if not Path(option).is_file():
            raise BenchError(f"--judge-pairs {option}: no such file")
        return Path(option)
    default = data_dir / BALANCED_SET if data_dir is not None else None
    return default if default is not None and default.is_file() else None


def _adapter_prompt_format(adapter: str | None) -> str | None:
    """The prompt format an adapter was trained with, from its train.json (None where there is none)."""
    record = Path(adapter) / "train.json" if adapter else None
    return json.loads(record.read_text()).get("prompt_format", "chat") if record and record.is_file() else None


def cmd_compare(args: argparse.Namespace, console: Console) -> None:
    from bench.analysis.compare import build_comparison, flips, load_run
    from bench.analysis.report import (delta_cell, format_cell, judge_label, judge_lines, ranking_lines, task_cells,
                                       verdict_lines, write_report)

    results_dir = Path(args.results_dir)
    if args.name is not None:
        check_plain_name(args.name, "a report name")
    comparison = build_comparison([load_run(results_dir, name) for name in args.runs])
    changed = {name: flips(results_dir, comparison.reference, name, args.flips) for name in args.runs[1:]} \
        if args.flips else {}
    report = write_report(results_dir / "reports" / (args.name or "-vs-".join(args.runs)), comparison)
    reference, rows = comparison.reference, comparison.rows
    against = f"deltas against {reference}, paired over the same examples (* p < 0.05; lost / gained: examples " \
              f"right->wrong / wrong->right)"
    versus = lambda r: format_cell(r, reference, "\n")
    shown = [(f"scores (%; drift: KL in nats) with 95% intervals; {against}", versus,
              rows[~rows["run"].isin(comparison.training_seed_runs)])]
    if comparison.training_seed_runs:
        shown.append((f"each training seed: {against}", versus,
                      rows[rows["run"].isin(comparison.training_seed_runs | {reference})]))
    if not comparison.pairs.empty:
        shown.append(("head to head: B vs A is B minus A, paired over the same examples (and by training seed)",
                      lambda r: delta_cell(r, "\n"), comparison.pairs))
    for title, cell, shown_rows in shown:
        columns, body = task_cells(shown_rows, cell)
        table = Table(title=title)
        table.add_column("task")
        for column in columns:
            table.add_column(column, justify="right")
        for first, cells in body:
            judge = f"\n{judge_label(comparison.judges[first.task])}" if first.task in comparison.judges else ""
            table.add_row(f"{first.task}\n{first.metric} (n={first.n}){judge}", *cells)
        console.print(table)
    for line in judge_lines(comparison.judges):
        console.print(f"judge: {line}", markup=False, highlight=False)
    for line in ranking_lines(comparison.ranking):
        console.print(f"ranking: {line}", markup=False, highlight=False)
    for line in verdict_lines(comparison.verdicts):
        console.print(f"verdict: {line}", markup=False, highlight=False)
    for name, rows in changed.items():
        flip_table = Table(title=f"{args.flips}: {len(rows)} examples changed from {reference} to {name}")
        for column in rows.columns:
            flip_table.add_column(str(column))
        for values in rows.itertuples(index=False):
            flip_table.add_row(*(str(v) for v in values))
        console.print(flip_table)
    console.print(f"report: {report}/report.{{md,csv,json,html}}")


def method_tables(method: str) -> str:
    """The profile tables a method's config keys come from (bench.study.Profile.train_config)."""
    return f"[sft] and [{method}]" if method in ("gkd", "onpolicy_sd") else "[sft]"


def _train_config(args: argparse.Namespace, cls: type):
    """The method's config: a profile's [sft] and [METHOD] tables, or --config; then the options, each of which
    only a method whose config has its key takes."""
    from fine_tune.common import config_from_dict, flat, load_config

    values = getattr(args, "config_values", None)  # from a profile's [sft] and [METHOD] tables
    config = config_from_dict(values, f"profile {method_tables(args.method)}", cls) if values else \
        load_config(Path(args.config) if args.config else None, cls)
    options = {key: getattr(args, key, None) for key in TRAIN_OPTIONS}
    options = {key: value for key, value in options.items() if value is not None and value is not False}
    for key in options:
        if key not in flat(config):
            having = [m for m, trainer in METHODS.items() if key in flat(trainer.config())]
            raise BenchError(f"--{key.replace('_', '-')}: not an option of {args.method} (only {', '.join(having)})")
    return config_from_dict(options, "bench train", cls, config) if options else config


# Options of `bench train` that set a key of a method's config.
TRAIN_OPTIONS = ("epochs", "lmbda", "beta", "temperature", "seq_kd", "max_new_tokens", "teacher_kind", "divergence")


def cmd_train(args: argparse.Namespace, console: Console) -> None:
    from bench.distributed import barrier, world
    from fine_tune.common import begin_training, finish, provenance, train_job, trained_already

    trainer, w = METHODS[args.method], world()
    teacher, teacher_adapter = getattr(args, "teacher", None), getattr(args, "teacher_adapter", None)
    if trainer.teacher and teacher is None:
        raise BenchError(f"bench train {args.method}: needs --teacher MODEL (and --teacher-adapter DIR for an "
                         f"adapter on it)")
    if not trainer.teacher and (teacher or teacher_adapter):
        raise BenchError(f"--teacher: only gkd has a separate teacher ({args.method} has none)")
    config = _train_config(args, trainer.config)
    name = args.name or f"{args.method}-{args.task}"
    RunStore(Path(args.results_dir), name)  # the same rules for a checkpoint name as for a run name
    job = train_job(args.method, args.task, args.model, name, Path(args.results_dir), args.data_dir, args.limit,
                    args.dtype, args.prompt_format, teacher, teacher_adapter)
    if trained_already(job, config):
        console.print(f"already trained: {job.out_dir} (delete it to train again)")
        return
    try:
        job.out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BenchError(f"--results-dir {args.results_dir}: not writable ({e.strerror})") from None
    if w.main:
        begin_training(job, config)
    record = {**trainer.train(job, config), **provenance(job, config)}
    if not w.main:  # rank 0 writes the checkpoint; the others wait for it
        barrier(w)
        return
    if "distillation" in record:
        d = record["distillation"]
        console.print(f"distilled: {d['accepted']}/{d['examples']} rewrites accepted ({100 * d['rate']:.1f}%)")
    finish(job.out_dir, record)
    barrier(w)
    console.print(f"adapter: {job.out_dir}  ({record['steps']} steps, loss {record['final_loss']:.4f}, "
                  f"{record['seconds']:.1f} s)")


def cmd_reproduce(args: argparse.Namespace, console: Console) -> None:
    from bench.study import load_profile, reproduce
    from fine_tune.common import config_from_dict
    from fine_tune.data import TRAIN_TASKS

    profile = load_profile(args.profile)
    # What the train and eval stages would refuse, refused before the first stage (hours before the evaluation).
    for method, trainer in METHODS.items():  # every table, used by this study or not: a typo is said
        config_from_dict(profile.train_config(method), f"--profile {args.profile} {method_tables(method)}",
                         trainer.config)
    if profile.train_task not in TRAIN_TASKS:
        raise BenchError(f"--profile {args.profile}: key 'train_task': unknown training task {profile.train_task!r}; "
                         f"choose from: {', '.join(TRAIN_TASKS)}")
    try:
        _selected_tasks(argparse.Namespace(suite=profile.suites, tasks=profile.tasks, temperature=None, samples=1,
                                           task_limits=profile.task_limits, max_new_tokens=profile.max_new_tokens))
    except BenchError as e:
        said = str(e).replace("--task-limits", "key 'task_limits'").replace("--max-new-tokens", "key 'max_new_tokens'")
        raise BenchError(f"--profile {args.profile}: {said}") from None
    reproduce(profile, args.data_dir, args.results_dir, console,
              {"train": cmd_train, "eval": cmd_eval, "compare": cmd_compare})


def cmd_judge(args: argparse.Namespace, console: Console) -> None:
    """Judge outputs made elsewhere (alpaca_eval's model_outputs.json) against the mirror's references, or head to
    head against other outputs of the same instructions, with the same judges as `bench eval`."""
    from bench.generation.cache import Cache
    from bench.data import load_task_data, resolve_data_dir
    from bench.generation.engine import progress_bar
    from bench.evaluation.judge import order_statistics, paired_outputs, read_model_outputs, win_rates
    from bench.execution.runner import summarize
    from bench.store import write_json
    from tasks.helpfulness import alpaca_eval

    outputs = read_model_outputs(Path(args.model_outputs))
    if args.reference_outputs:
        references = read_model_outputs(Path(args.reference_outputs))
    else:
        examples = load_task_data(alpaca_eval, resolve_data_dir(args.data_dir), args.limit).examples
        references = [{"instruction": ex.input, "output": ex.target, "generator": "text_davinci_003"} for ex in examples]
    places = paired_outputs(outputs, references, args.model_outputs)
    judge = _judge(args, Cache(Path(args.results_dir) / "cache" / "generations.sqlite"))
    with progress_bar() as progress:
        preferences = judge.preferences([o["instruction"] for o in outputs], [references[i]["output"] for i in places],
                                        [o["output"] for o in outputs], progress, "judge")
    summary = {**summarize([p.second for p in preferences]), "alpaca_eval": win_rates(preferences),
               "order": order_statistics(preferences), "judge": judge.identity(),
               "model_outputs": args.model_outputs, "reference_outputs": args.reference_outputs or "the mirror's"}
    if args.json:
        write_json(Path(args.json), {**summary, "preferences": [
            {"instruction": o["instruction"], "preference": p.second, "orders": p.orders}
            for o, p in zip(outputs, preferences)]})
    console.print(f"win rate of {args.model_outputs} against {summary['reference_outputs']} references: "
                  f"{100 * summary['mean']:.2f} [{100 * summary['ci_low']:.2f}, {100 * summary['ci_high']:.2f}] "
                  f"(n={summary['n']}; judge {judge.spec}, verdict flips with the order on "
                  f"{100 * summary['order'].get('flip_rate', float('nan')):.1f}% of pairs)")


def cmd_judge_agreement(args: argparse.Namespace, console: Console) -> None:
    """A judge against the reference judge's verdicts on the same pairs, beside the baselines; stored as a run."""
    from bench.analysis.report import agreement_markdown
    from bench.evaluation.agreement import read_pairs
    from bench.execution.runner import agreement_identity, agreement_run_name, evaluate_agreement
    from bench.generation.cache import Cache

    pairs = read_pairs(Path(args.pairs), args.max_chars, args.limit)
    if not pairs:
        raise BenchError(f"--pairs {args.pairs}: no pair left (--max-chars {args.max_chars})")
    results_dir = Path(args.results_dir)
    judge = _judge(args, Cache(results_dir / "cache" / "generations.sqlite"))
    identity = agreement_identity(judge, pairs, args.max_chars, args.limit)
    store = RunStore(results_dir, args.name or agreement_run_name(identity, judge))
    store.check_writable()
    metrics = evaluate_agreement(judge, pairs, store, identity, str(args.pairs))
    print(agreement_markdown(metrics["readings"], f"{judge.spec} against {args.pairs} ({len(pairs)} pairs; "
                                                  f"{store.dir})"))


def cmd_gate(args: argparse.Namespace, console: Console) -> int:
    """Exit 1 on a regression only; usage and data errors are 2 (main), and so is any crash."""
    from bench.analysis.compare import load_run
    from bench.analysis.baselines import load_baseline
    from bench.analysis.gate import GateConfig, gate, is_run_dir, load_gate_config
    from bench.analysis.report import gate_json, gate_junit, gate_markdown
    from bench.store import atomic_write_text, write_json

    results_dir = Path(args.results_dir)
    config = load_gate_config(Path(args.config)) if args.config else GateConfig()
    overrides = {key: value for key, value in (("alpha", args.alpha), ("default_max_drop", args.default_max_drop))
                 if value is not None}
    config = replace(config, **overrides, max_drop={**config.max_drop, **args.max_drop},
                     require={**config.require, **args.require}, strict=config.strict or args.strict)
    baseline = load_run(results_dir, args.baseline) if is_run_dir(results_dir, args.baseline) or \
        not Path(args.baseline).is_dir() else load_baseline(Path(args.baseline))
    verdict = gate(baseline, load_run(results_dir, args.candidate), config, args.tasks or None)
    text = gate_markdown(verdict)
    if args.markdown:
        atomic_write_text(Path(args.markdown), text)
    if args.json:
        write_json(Path(args.json), gate_json(verdict))
    if args.junit:
        atomic_write_text(Path(args.junit), gate_junit(verdict))
    if summary := os.environ.get("GITHUB_STEP_SUMMARY"):
        with open(summary, "a", encoding="utf-8") as f:
            f.write(text + "\n")
    print(text, end="")  # verbatim: the same markdown as the files
    return 1 if verdict.failed else 0


def cmd_baseline(args: argparse.Namespace, console: Console) -> None:
    from bench.analysis.compare import load_run
    from bench.analysis.baselines import save_baseline

    out = save_baseline(Path(args.results_dir), load_run(Path(args.results_dir), args.run), Path(args.dir))
    console.print(f"baseline of run {args.run}: {out} (commit it; `bench gate RUN --baseline {out}` reads it)")


def cmd_baseline_check(args: argparse.Namespace, console: Console) -> int:
    """Re-run a baseline's evaluation afresh and require every prediction to be the same (greedy decoding)."""
    import tempfile

    from bench.analysis.baselines import BASELINE_FILE, changed_predictions, read_baseline, rerun_argv, rounding_note

    baseline = Path(args.dir)
    if not (baseline / BASELINE_FILE).is_file():
        raise BenchError(f"{baseline}: not a baseline directory (no {BASELINE_FILE})")
    saved = read_baseline(baseline / BASELINE_FILE)
    if note := rounding_note(saved):
        console.print(f"[yellow]{note}[/yellow]")
    with tempfile.TemporaryDirectory(prefix="forgetbench-baseline-") as tmp:
        code = main(rerun_argv(saved, Path(tmp), args.data_dir))
        if code != 0:
            raise BenchError(f"{baseline}: re-running its evaluation failed (exit {code})")
        changes = changed_predictions(baseline, Path(tmp) / "runs" / saved["run"])
    for change in changes:
        print(change)
    print(f"{baseline}: {len(changes)} predictions changed" if changes else f"{baseline}: every prediction the same")
    return 1 if changes else 0


def _drops(value: str) -> dict[str, float]:
    return _per_task(value, _non_negative_float)


def cmd_tasks(args: argparse.Namespace, console: Console) -> None:
    from bench.data import read_jsonl, resolve_data_dir
    from tasks import SUITES, TASKS

    data_dir = resolve_data_dir(args.data_dir)
    table = Table(title=f"tasks (data: {data_dir or 'Hugging Face Hub'})")
    for column in ("task", "capability", "metric", "examples", "dataset", "suites"):
        table.add_column(column)
    sizes: dict[str, int | None] = {}
    for name, task in TASKS.items():
        paths = _eval_files(task, data_dir)
        sizes[name] = sum(len(read_jsonl(p)) for p in paths) if paths and all(p.is_file() for p in paths) else None
        source = task.dataset if isinstance(task, Task) else \
            f"lm-eval {task.name}" + (f" ({len(task.builtin)} tasks)" if len(task.builtin) > 1 else "")
        suites = ",".join(s for s, names in SUITES.items() if name in names)
        table.add_row(name, task.capability, task.metric, "?" if sizes[name] is None else str(sizes[name]),
                      source, suites)
    console.print(table)
    suite_table = Table(title="suites")
    for column in ("suite", "tasks", "examples"):
        suite_table.add_column(column)
    for suite, names in SUITES.items():
        known = [sizes[n] for n in names if sizes[n] is not None]
        total = str(sum(known)) if len(known) == len(names) else "?"
        suite_table.add_row(suite, ", ".join(names), total)
    console.print(suite_table)


def _eval_files(task: Task | HarnessTask, data_dir: Path | None) -> list[Path]:
    """The files holding a task's scored examples in the mirror (none for Hub-only tasks)."""
    from bench.evaluation.lmeval import eval_split, leaves, mirror_files

    if data_dir is None:
        return []
    if isinstance(task, Task):
        return [data_dir / task.dataset]
    files = [mirror_files(task, leaf, data_dir) for leaf, _ in leaves(task)]
    return [f[eval_split(f)] for f in files if f is not None]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not argparse's usage block
        self.exit(2, f"{self.prog}: error: {message}\n")


def _eval_parser(commands) -> None:
    ev = commands.add_parser("eval", help="evaluate a model on suites or tasks")
    ev.add_argument("model", help="`default` (embedded SmolLM2-135M-Instruct), a local model directory, or a Hub id")
    ev.add_argument("--suite", type=_csv, default=[], help="comma-separated suites (see `bench tasks`)")
    ev.add_argument("--tasks", type=_csv, default=[], help="comma-separated task names")
    ev.add_argument("--limit", type=_positive_int, help="the first N examples of each task")
    ev.add_argument("--task-limits", type=_task_limits, default={}, metavar="TASK=N,...",
                    help="per-task limits that override --limit")
    ev.add_argument("--max-new-tokens", type=_task_limits, default={}, metavar="TASK=N,...",
                    help="per-task caps on generated tokens below the task's own (ifeval: lm-eval's 1280); recorded "
                         "in run.json and the report")
    ev.add_argument("--data-dir", help="offline mirror (default: $BENCH_DATA_DIR, else ../shared/data if present, else the Hub)")
    ev.add_argument("--name", help="run name (default: from the model and adapter)")
    ev.add_argument("--results-dir", default=str(DEFAULT_RESULTS_DIR), help="default: results")
    ev.add_argument("--adapter", help="a PEFT adapter directory to load on top of the model")
    ev.add_argument("--batch-size", type=_positive_int, default=64, help="generation batch size (default 64)")
    ev.add_argument("--samples", type=_positive_int, default=1,
                    help="generations per example (needs --temperature); code tasks report pass@k for k <= N")
    ev.add_argument("--temperature", type=_non_negative_float, help="sampling temperature (default: greedy)")
    ev.add_argument("--workers", type=_positive_int, help="programs run in parallel by the code sandbox (default: the cores)")
    ev.add_argument("--prompt-format", default="chat", choices=PROMPT_FORMATS, help=PROMPT_FORMAT_HELP)
    ev.add_argument("--dtype", default="auto", choices=DTYPES,
                    help="auto: bfloat16 where the hardware has it, else float32")
    ev.add_argument("--judge", help="judged tasks (alpaca_eval): local:MODEL (default: local:"
                    f"{JUDGE_HELP}) runs a model here with alpaca_eval's prompt, short:MODEL with a short prompt, "
                    "pointwise:MODEL scores each output alone; or an alpaca_eval annotator config (alpaca_eval_gpt4, the "
                    "study's; weighted_alpaca_eval_gpt4_turbo; a configs.yaml) through the OpenAI API or an "
                    "OpenAI-compatible endpoint (OPENAI_CLIENT_CONFIG_PATH or OPENAI_API_BASE)")
    ev.add_argument("--judge-pairs", help="pairs a reference judge decided (bench judge agreement's format), to measure "
                    "the judge's agreement on where the results directory has no agreement run of it: the first "
                    "100 with both outputs under 1,500 characters (default: the mirror's balanced set; none: do not "
                    "measure, the judge is then reported not informative)")
    ev.add_argument("--judge-orders", choices=("both", "random"), default="both",
                    help="both (default): every pair judged in both orders and averaged; random: alpaca_eval's one "
                         "seeded random order (half the judge's cost)")
    ev.add_argument("--shard", metavar="I/N", help="evaluate shard I of N (0 <= I < N) of every task's examples, "
                    "as a partial run NAME.shard-I-of-N; `bench merge` joins the N (under torchrun or accelerate "
                    "launch each process takes its rank's shard and rank 0 merges them)")
    ev.set_defaults(func=cmd_eval)


def _merge_parser(commands) -> None:
    mg = commands.add_parser("merge", help="one run from the partial runs of its shards (bench eval --shard I/N)")
    mg.add_argument("runs", nargs="+", help="the shards' run names (NAME.shard-I-of-N), every one of them once")
    mg.add_argument("--name", required=True, help="the merged run's name")
    mg.add_argument("--results-dir", default=str(DEFAULT_RESULTS_DIR), help="default: results")
    mg.set_defaults(func=cmd_merge)


def _train_parser(commands) -> None:
    tr = commands.add_parser("train", help="fine-tune a LoRA adapter on a task's training data")
    tr.add_argument("method", choices=METHODS,
                    help="sft: on the dataset's responses; sdft: on the seed model's filtered rewrites of them; gkd: "
                         "distil --teacher on the student's own samples; onpolicy_sd: distil the model itself, shown "
                         "the reference answer, on its own samples")
    tr.add_argument("--task", required=True, help="gsm8k, openfunction, alpaca, dolly or lima")
    tr.add_argument("--model", default="default", help="the seed model (default: the embedded SmolLM2-135M-Instruct)")
    tr.add_argument("--limit", type=_positive_int, help="the first N training examples")
    tr.add_argument("--epochs", type=_positive_float, help="default: the study's (5 for gsm8k, openfunction; else 2)")
    tr.add_argument("--config", help="a JSON or TOML file of the method's config keys (rank, alpha, learning_rate, "
                                     "...; gkd and onpolicy_sd add theirs: fine_tune/gkd.py, onpolicy_sd.py)")
    tr.add_argument("--teacher", help="gkd: the teacher model (same tokenizer and vocabulary as --model)")
    tr.add_argument("--teacher-adapter", help="gkd: a PEFT adapter merged into the teacher")
    tr.add_argument("--lmbda", type=_unit_float, help="gkd: probability of on-policy micro-batches (default 0.5)")
    tr.add_argument("--beta", type=_unit_float, help="gkd: generalized JSD mix, 0 forward KL, 1 reverse KL (default 0.5)")
    tr.add_argument("--temperature", type=_positive_float,
                    help="sampling temperature (gkd 0.9, onpolicy_sd 1.0; gkd's loss stays at 1 unless the config "
                         "sets temperature_in_loss)")
    tr.add_argument("--seq-kd", action="store_true", help="gkd: off-policy micro-batches on the teacher's samples")
    tr.add_argument("--max-new-tokens", type=_positive_int, help="tokens per sample (gkd 128, onpolicy_sd 256)")
    tr.add_argument("--teacher-kind", choices=("ema", "base", "live"), help="onpolicy_sd: the teacher's weights (default ema)")
    tr.add_argument("--divergence", choices=("forward_kl", "reverse_kl", "topk_jsd"),
                    help="onpolicy_sd: the per-token loss (default forward_kl)")
    tr.add_argument("--name", help="checkpoint name (default: METHOD-TASK)")
    tr.add_argument("--data-dir")
    tr.add_argument("--results-dir", default=str(DEFAULT_RESULTS_DIR), help="default: results")
    tr.add_argument("--prompt-format", default="chat", choices=PROMPT_FORMATS, help=PROMPT_FORMAT_HELP)
    tr.add_argument("--dtype", default="auto", choices=DTYPES,
                    help="auto: bf16 autocast where the hardware has it, else float32")
    tr.set_defaults(func=cmd_train)


def _compare_parser(commands) -> None:
    cmp = commands.add_parser("compare", help="paired comparison of runs against the first (the reference)")
    cmp.add_argument("runs", nargs="+", help="run names: the reference first, then the runs to compare with it")
    cmp.add_argument("--results-dir", default=str(DEFAULT_RESULTS_DIR), help="default: results")
    cmp.add_argument("--flips", metavar="TASK", help="list the examples of TASK whose score changed")
    cmp.add_argument("--name", help="report name under RESULTS_DIR/reports (default: RUN-vs-RUN...)")
    cmp.set_defaults(func=cmd_compare)


def _reproduce_parser(commands) -> None:
    rp = commands.add_parser("reproduce", help="run a study profile: train, evaluate, compare")
    rp.add_argument("--profile", default="tiny", help="tiny (CPU, embedded model), paper (the study's, GPU), or a .toml")
    rp.add_argument("--data-dir")
    rp.add_argument("--results-dir", default=str(DEFAULT_RESULTS_DIR), help="default: results")
    rp.set_defaults(func=cmd_reproduce)


def _judge_parser(commands) -> None:
    jd = commands.add_parser("judge", help="judge model outputs made elsewhere (outputs), or measure a judge "
                                           "(agreement)")
    jd_commands = jd.add_subparsers(dest="judge_command", required=True, parser_class=_Parser)
    ag = jd_commands.add_parser("agreement", help="a judge's agreement with a reference judge's verdicts, beside "
                                                  "the baselines (the longer output, the reference, position one)")
    ag.add_argument("--pairs", required=True, help="a .jsonl of {instruction, output_1, output_2, preference in [1, 2]}"
                                                   " or a directory of them (the mirror's alpaca_eval_judgments)")
    ag.add_argument("--judge", help="as for bench eval (default: the local default judge)")
    ag.add_argument("--limit", type=_positive_int, help="the first N pairs (after --max-chars)")
    ag.add_argument("--max-chars", type=_positive_int, help="only pairs whose two outputs are both shorter")
    ag.add_argument("--name", help="the run's name (default: agreement-JUDGE-PAIRS, from their hashes)")
    ag.add_argument("--results-dir", default=str(DEFAULT_RESULTS_DIR), help="default: results")
    ag.add_argument("--dtype", default="auto", choices=DTYPES)
    ag.add_argument("--batch-size", type=_positive_int, default=64)
    ag.set_defaults(func=cmd_judge_agreement)
    jd = jd_commands.add_parser("outputs", help="judge alpaca_eval model outputs made elsewhere against the "
                                                "references (also `bench judge FILE`)")
    jd.add_argument("model_outputs", help="alpaca_eval's model_outputs.json: a list of {instruction, output, generator}")
    jd.add_argument("--reference-outputs", help="another model_outputs.json of the same instructions, to judge head "
                                                "to head (default: the mirror's text-davinci-003 references)")
    jd.add_argument("--limit", type=_positive_int, help="the first N references of the mirror")
    jd.add_argument("--judge", help="as for bench eval (default: the local default judge)")
    jd.add_argument("--judge-orders", choices=("both", "random"), default="both")
    jd.add_argument("--json", help="write the per-instruction preferences and the summary here")
    jd.add_argument("--data-dir")
    jd.add_argument("--results-dir", default=str(DEFAULT_RESULTS_DIR), help="default: results (its cache)")
    jd.add_argument("--dtype", default="auto", choices=DTYPES)
    jd.add_argument("--batch-size", type=_positive_int, default=64)
    jd.set_defaults(func=cmd_judge)


def _gate_parser(commands) -> None:
    gt = commands.add_parser("gate", help="CI regression verdict: a candidate run against a baseline, paired tests")
    gt.add_argument("candidate", help="the candidate run's name")
    gt.add_argument("--baseline", required=True, help="a run name, or a directory written by `bench baseline save`")
    gt.add_argument("--results-dir", default=str(DEFAULT_RESULTS_DIR), help="default: results")
    gt.add_argument("--tasks", type=_csv, default=[], help="gate only these tasks (default: every task both scored)")
    gt.add_argument("--config", help="gate.toml: alpha, default_max_drop, strict, [max_drop], [require]")
    gt.add_argument("--alpha", type=_unit_float, help="family-wise level, Holm across the tasks (default 0.05)")
    gt.add_argument("--default-max-drop", type=_non_negative_float, metavar="POINTS",
                    help="the drop any task may show before it can fail (default 0)")
    gt.add_argument("--max-drop", type=_drops, default={}, metavar="TASK=POINTS,...",
                    help="allowed drops per task or capability")
    gt.add_argument("--require", type=_drops, default={}, metavar="TASK=MIN,...", help="floors on the candidate's scores (a ceiling on drift's KL)")
    gt.add_argument("--strict", action="store_true", help="a task whose n cannot show its allowed drop, or any drop, fails")
    gt.add_argument("--markdown", help="write the report here (also appended to $GITHUB_STEP_SUMMARY when set)")
    gt.add_argument("--json", help="write the verdict as JSON here")
    gt.add_argument("--junit", help="write JUnit XML here (one testcase per task)")
    gt.set_defaults(func=cmd_gate)


def _baseline_parser(commands) -> None:
    bl = commands.add_parser("baseline", help="save a run as a baseline directory to commit")
    bl_commands = bl.add_subparsers(dest="baseline_command", required=True, parser_class=_Parser)
    save = bl_commands.add_parser("save", help="bench baseline save RUN DIR")
    save.add_argument("run")
    save.add_argument("dir")
    save.add_argument("--results-dir", default=str(DEFAULT_RESULTS_DIR), help="default: results")
    save.set_defaults(func=cmd_baseline)
    check = bl_commands.add_parser("check", help="re-run a baseline's evaluation; exit 1 if any prediction changed")
    check.add_argument("dir")
    check.add_argument("--data-dir")
    check.set_defaults(func=cmd_baseline_check)


def _tasks_parser(commands) -> None:
    ls = commands.add_parser("tasks", help="list tasks, suites and their sizes")
    ls.add_argument("--data-dir")
    ls.set_defaults(func=cmd_tasks)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bench", description="Measure what fine-tuning made a model forget.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    for add in (_eval_parser, _merge_parser, _train_parser, _compare_parser, _reproduce_parser, _judge_parser,
                _gate_parser, _baseline_parser, _tasks_parser):
        add(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["judge"] and len(argv) > 1 and argv[1] not in ("agreement", "outputs", "-h", "--help"):
        argv.insert(1, "outputs")  # `bench judge FILE`, as before there were two
    args = build_parser().parse_args(argv)
    keep_freed_memory()
    console = Console(stderr=False, quiet=os.environ.get("RANK", "0") != "0")  # under a launcher, rank 0 speaks
    try:
        return args.func(args, console) or 0
    except BenchError as e:
        print(f"bench: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # a gate that crashes must not read as a regression (exit 1)
        if args.command != "gate":
            raise
        print(f"bench: error: bench gate crashed ({type(e).__name__}: {e})", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
