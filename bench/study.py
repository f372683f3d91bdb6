"""The study: a profile (which seed model, which training task and methods, which suites and how many examples) and
`bench reproduce`, which runs it. Profiles are data (profiles/NAME.toml), read here; an unknown key or a wrong type
is an error naming it."""
from __future__ import annotations

import argparse
import json
import time
import tomllib
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from rich.console import Console

from bench.data import sha256_file
from bench.distributed import world
from bench.generation.models import DTYPES, PROMPT_FORMATS
from bench.machine import describe, machine
from bench.memory import PeakRSS
from bench.store import write_json
from bench.types import BenchError

METHODS = ("sft", "sdft", "gkd", "onpolicy_sd")  # the trainers of `bench train`
Command = Callable[[argparse.Namespace, Console], Any]  # a `bench` subcommand
PROFILES_DIR = Path(__file__).resolve().parents[1] / "profiles"


@dataclass(frozen=True)
class Profile:
    name: str
    model: str
    train_task: str
    suites: list[str] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)  # tasks beyond the suites' (suites and tasks as in `bench eval`)
    dtype: str = "auto"
    prompt_format: str = "chat"  # or "study": the sdft repository's plain-text Alpaca template (bench eval --help)
    methods: list[str] = field(default_factory=lambda: ["sft", "sdft"])
    train_limit: int | None = None
    limit: int | None = None
    task_limits: dict[str, int] = field(default_factory=dict)
    max_new_tokens: dict[str, int] = field(default_factory=dict)  # per-task token caps (`bench eval --max-new-tokens`)
    batch_size: int = 64
    sft: dict[str, Any] = field(default_factory=dict)  # SFTConfig keys (checked by the trainer's config reader)
    gkd: dict[str, Any] = field(default_factory=dict)  # GKDConfig keys over [sft]'s
    onpolicy_sd: dict[str, Any] = field(default_factory=dict)  # OnPolicySDConfig keys over [sft]'s
    teacher: str | None = None  # gkd's teacher model (default: the seed model)
    teacher_adapter: str | None = None  # an adapter on it: a directory, or a method (below)
    judge: str | None = None  # the judge of judged tasks (`bench eval --judge`; default: the local default judge)
    judge_orders: str = "both"  # or "random" (`bench eval --judge-orders`)
    training_seeds: list[int] = field(default_factory=list)  # each method trained once per seed (METHOD-sN)

    def train_config(self, method: str) -> dict[str, Any]:
        """The config keys of a method: [sft]'s, with the method's own table over them."""
        return {**self.sft, **getattr(self, method, {})} if method in ("gkd", "onpolicy_sd") else self.sft

    def teacher_fine_tune(self) -> str | None:
        """The method by which the study first fine-tunes a teacher of another model than the seed (`teacher_adapter`
        naming a method, `teacher` another model), as the GKD paper fine-tunes its teacher on the task; None where
        the teacher is raw, a directory, or the seed with a method's checkpoint of this study."""
        different = self.teacher is not None and self.teacher != self.model
        return self.teacher_adapter if different and self.teacher_adapter in METHODS else None

    def teacher_name(self, training_seed: int | None) -> str:
        """The checkpoint of GKD's teacher adapter of a training seed (a method's of this study, of the seed or of
        the teacher model)."""
        stem = "teacher-" if self.teacher_fine_tune() else ""
        return f"{self.name}-{stem}{self.teacher_adapter}" + (f"-s{training_seed}" if training_seed is not None else "")

    def trained_names(self) -> list[tuple[str, int | None, str]]:
        """(method, training seed, checkpoint and run name) of every fine-tune: `PROFILE-METHOD`, or with `training_seeds`
        `PROFILE-METHOD-sN` per seed (each method's config trained with seed N)."""
        return [(m, s, f"{self.name}-{m}" + (f"-s{s}" if s is not None else ""))
                for m in self.methods for s in (self.training_seeds or [None])]


def load_profile(spec: str) -> Profile:
    """`tiny`, `paper` (profiles/NAME.toml) or a path to a TOML file."""
    path = Path(spec) if spec.endswith(".toml") else PROFILES_DIR / f"{spec}.toml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PROFILES_DIR.glob("*.toml")))
        raise BenchError(f"--profile {spec}: no such profile ({known}, or a .toml file)")
    try:
        values = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise BenchError(f"{path}: not valid TOML ({e})") from None
    types = {f.name: f.type for f in fields(Profile) if f.name != "name"}
    for key, value in values.items():
        if key not in types:
            raise BenchError(f"{path}: unknown key {key!r} (keys: {', '.join(types)})")
        expected = {"str": str, "str | None": str, "int | None": int, "int": int, "list[str]": list, "list[int]": list, "dict[str, int]": dict,
                    "dict[str, Any]": dict}[types[key]]
        if not isinstance(value, expected) or isinstance(value, bool):
            raise BenchError(f"{path}: key {key!r} must be {types[key]}, got {type(value).__name__}")
        if types[key] == "list[str]" and not all(isinstance(v, str) for v in value):
            raise BenchError(f"{path}: key {key!r} must be a list of names")
        counts = value.items() if types[key] == "dict[str, int]" else [(key, value)] if expected is int else []
        for name, count in counts:
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise BenchError(f"{path}: key {key!r}{'' if name == key else f' ({name})'} must be a whole number "
                                 f"of at least 1, got {count!r}")
    for key in ("model", "train_task"):
        if key not in values:
            raise BenchError(f"{path}: missing key {key!r}")
    if values.get("prompt_format", "chat") not in PROMPT_FORMATS:
        raise BenchError(f"{path}: key 'prompt_format' must be one of {', '.join(PROMPT_FORMATS)}")
    if values.get("dtype", "auto") not in DTYPES:
        raise BenchError(f"{path}: key 'dtype' must be one of {', '.join(DTYPES)}")
    if not values.get("suites") and not values.get("tasks"):
        raise BenchError(f"{path}: name the evaluation in 'suites' or 'tasks'")
    methods = values.get("methods", ["sft", "sdft"])
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise BenchError(f"{path}: key 'methods': unknown method {unknown[0]!r} ({', '.join(METHODS)})")
    seeds = values.get("training_seeds", [])
    if any(isinstance(s, bool) or not isinstance(s, int) for s in seeds) or len(set(seeds)) != len(seeds):
        raise BenchError(f"{path}: key 'training_seeds' must be a list of distinct whole numbers")
    if values.get("judge_orders", "both") not in ("both", "random"):
        raise BenchError(f"{path}: key 'judge_orders' must be both or random")
    adapter, other_teacher = values.get("teacher_adapter"), values.get("teacher", values["model"]) != values["model"]
    if "gkd" in methods and adapter in METHODS and not other_teacher and (
            adapter not in methods or methods.index(adapter) > methods.index("gkd")):
        raise BenchError(f"{path}: key 'teacher_adapter' names method {adapter!r}, which must be trained before gkd "
                         f"in 'methods'")
    return Profile(name=path.stem, **values)


def reproduce(profile: Profile, data_dir: str | None, results_dir: str, console: Console,
              commands: dict[str, Command]) -> None:
    """The study of a profile, stage by stage, through the commands a user runs (`commands`: the CLI's train, eval
    and compare): train each method, evaluate the seed and every fine-tuned model, compare. Every stage reuses
    finished work. Under a launcher each stage runs on every process as `bench train` and `bench eval` do there
    (data-parallel, sharded); rank 0 compares and writes stages.json."""
    common = {"data_dir": data_dir, "results_dir": results_dir}
    timings: dict[str, float] = {}
    peaks: dict[str, float] = {}
    stages_file = Path(results_dir) / "reports" / profile.name / "stages.json"
    cold = _earlier_cold(stages_file, console)
    here = describe(machine())

    def record_sha256(record: Path | None) -> str | None:
        return sha256_file(record) if record is not None and record.is_file() else None

    def stage(label: str, command, record: Path | None = None, **values) -> None:
        """Runs a stage; where its work record (train.json, run.json) changed, this invocation did the stage's work,
        and its seconds and peak are the stage's cold ones until the work is done again."""
        console.rule(f"[bold]{profile.name}: {label}")
        before = record_sha256(record)
        started = time.perf_counter()
        with PeakRSS() as peak:
            command(argparse.Namespace(**common, **values), console)
        timings[label], peaks[label] = round(time.perf_counter() - started, 1), peak.mib
        after = record_sha256(record)
        if after is not None and after != before:
            cold[label] = {"seconds": timings[label], "peak_rss_mib": peaks[label], "machine": here,
                           "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"), "record_sha256": after}
        elif after is None or cold.get(label, {}).get("record_sha256") != after:
            cold.pop(label, None)  # the work was done outside this study's invocations, or is gone
        if world().main:  # after every stage, so that a killed study keeps the cold times of the stages it finished
            write_json(stages_file, {**timings, "complete": False, "cold": cold})

    checkpoints = Path(results_dir) / "checkpoints"
    trained = profile.trained_names()
    teacher_method = profile.teacher_fine_tune() if "gkd" in profile.methods else None
    teachers = [(teacher_method, seed, profile.teacher_name(seed), profile.teacher)
                for seed in dict.fromkeys(seed for _, seed, _ in trained)] if teacher_method else []
    for method, seed, name, model in teachers + [(m, s, n, profile.model) for m, s, n in trained]:
        teacher = {}
        if method == "gkd":
            adapter = profile.teacher_adapter  # a method's: the teacher fine-tune of the same training seed
            teacher = {"teacher": profile.teacher or profile.model,
                       "teacher_adapter": str(checkpoints / profile.teacher_name(seed))
                       if adapter in METHODS else adapter}
        values = profile.train_config(method) | ({"training_seed": seed} if seed is not None else {})
        stage(f"train {name.removeprefix(profile.name + '-')}", commands["train"], checkpoints / name / "train.json",
              method=method, task=profile.train_task,
              model=model, limit=profile.train_limit, epochs=None, config=None, config_values=values,
              name=name, dtype=profile.dtype, prompt_format=profile.prompt_format, **teacher)
    runs = [f"{profile.name}-seed"] + [name for _, _, name in trained]
    for run, name in zip(runs, [None, *runs[1:]]):
        adapter = str(checkpoints / name) if name else None
        stage(f"eval {run.removeprefix(profile.name + '-')}", commands["eval"],
              Path(results_dir) / "runs" / run / "run.json", model=profile.model, adapter=adapter,
              suite=profile.suites, tasks=profile.tasks, limit=profile.limit, task_limits=profile.task_limits,
              max_new_tokens=profile.max_new_tokens, name=run,
              batch_size=profile.batch_size, samples=1, temperature=None, workers=None, dtype=profile.dtype,
              prompt_format=profile.prompt_format, judge=profile.judge, judge_orders=profile.judge_orders)
    if not world().main:  # under a launcher every rank trained and evaluated its share; rank 0 compares
        return
    stage("compare", commands["compare"], runs=runs, flips=None, name=profile.name)
    timings["total"] = round(sum(timings.values()), 1)
    work, work_peaks = _work_seconds(Path(results_dir), profile.name, runs, [name for _, _, name, _ in teachers])
    cold = {label: entry for label, entry in cold.items() if label in timings}  # stages the profile no longer has go
    write_json(stages_file, {**timings, "complete": True, "cold": cold, "work": work, "peak_rss_mib": peaks,
                             "work_peak_rss_mib": work_peaks, "machine": machine()})
    console.print("stage seconds: " + json.dumps(timings))
    console.print("cold stage seconds, in the invocation that did each stage's work: "
                  + json.dumps({label: entry["seconds"] for label, entry in cold.items()}))
    console.print("work seconds, when it was done: " + json.dumps(work))
    console.print("peak resident MiB per stage: " + json.dumps(peaks) + "; when the work was done: "
                  + json.dumps(work_peaks))


def _earlier_cold(stages_file: Path, console: Console) -> dict[str, dict[str, Any]]:
    """The cold stage records of the study's earlier invocations (stages.json's `cold`); a stage keeps its record
    while its work record's sha256 is the one recorded."""
    try:
        earlier = json.loads(stages_file.read_text()) if stages_file.is_file() else {}
    except (OSError, json.JSONDecodeError) as e:
        console.print(f"[yellow]{stages_file}: not readable ({e}); the earlier stages' cold times are not kept")
        return {}
    cold = earlier.get("cold") if isinstance(earlier, dict) else None
    return {label: entry for label, entry in cold.items() if isinstance(entry, dict)} if isinstance(cold, dict) else {}


def _work_seconds(results_dir: Path, profile: str, runs: list[str], teachers: list[str]
                  ) -> tuple[dict[str, dict[str, float]], dict[str, float | None]]:
    """Where each stage's work spent its time when it was done (distillation and training inside `train sdft`,
    each task inside an `eval`) and its peak resident MiB then, read from train.json and run.json: a re-run that
    reuses the work keeps them."""
    work: dict[str, dict[str, float]] = {}
    peaks: dict[str, float | None] = {}
    for name in teachers + runs[1:]:  # the fine-tunes: a method's checkpoint and run share the name
        record = json.loads((results_dir / "checkpoints" / name / "train.json").read_text())
        label = f"train {name.removeprefix(profile + '-')}"
        work[label] = {"training": record["seconds"]}
        if "distillation" in record:
            work[label]["distil"] = record["distillation"]["seconds"]
        work[label].update(record.get("seconds_by_part", {}))  # the on-policy trainers' parts
        peaks[label] = record.get("peak_memory_mb")
    for run in runs:
        record = json.loads((results_dir / "runs" / run / "run.json").read_text())
        tasks = record["timings"]
        tasks.pop("total", None)
        label = f"eval {run.removeprefix(profile + '-')}"
        work[label] = tasks
        peaks[label] = max(record.get("peak_rss_mib", {}).values(), default=None)  # tasks' peaks; runs before 2026-12-04 have none
    return work, peaks
