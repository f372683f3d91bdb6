"""What every trainer shares: the LoRA adapter and the optimisation settings, reading a config from a profile or
a file, a training job's identity (a finished checkpoint with the same identity is reused, never retrained) and
provenance, the train log and its plot, and a checkpoint written so that nothing half-written looks complete.
The methods themselves live one per file (sft.py, sdft.py, gkd.py, onpolicy_sd.py) and are listed in METHODS."""
from __future__ import annotations

import csv
import json
import shutil
import sys
import tomllib
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from bench.data import resolve_data_dir
from bench.generation.models import (adapter_sha256, decoding_sha256, resolve_model_dir, unsorted_adapter_sha256,
                                     weights_sha256)
from bench.memory import peak_rss_mib
from bench.store import write_json
from bench.types import BenchError
from fine_tune.data import TRAINED_CAPABILITY, TrainExample, load_train_examples

EPOCHS = {"gsm8k": 5, "openfunction": 5}  # the study's; 2 for every other task


@dataclass(frozen=True)
class LoRA:
    """The adapter every method trains: the study's r 8, alpha 16, dropout 0.1 on q_proj and v_proj."""

    rank: int = 8
    alpha: int = 16
    dropout: float = 0.1
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")


@dataclass(frozen=True)
class Optimization:
    """The study's: AdamW at lr 1e-4 on a cosine schedule, batch 2 x gradient accumulation 4, epochs 5 for gsm8k and
    openfunction, else 2 (None: the task's)."""

    learning_rate: float = 1e-4
    scheduler: str = "cosine"
    warmup_ratio: float = 0.0  # a fraction of the training steps, rounded up (as transformers does for SFT)
    epochs: float | None = None
    batch_size: int = 2
    gradient_accumulation: int = 4
    max_length: int = 1024  # tokens of prompt and response
    training_seed: int = 42  # LoRA initialisation, data order, dropout and samples
    save_steps: int = 50  # optimizer steps between resumable states
    weight_decay: float = 0.0  # AdamW's decoupled decay, as transformers' Trainer and TRL's trainers default

    def epochs_for(self, task: str) -> float:
        return self.epochs if self.epochs is not None else EPOCHS.get(task, 2)


def add_lora(model: Any, lora: LoRA) -> Any:
    """The model with a fresh LoRA adapter: every trainer's student."""
    from peft import LoraConfig, get_peft_model

    names = [name for name, _ in model.named_modules()]
    for target in lora.target_modules:  # peft's rule: the module's name, or its name's last dotted parts
        if not any(name == target or name.endswith("." + target) for name in names):
            linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if type(m).__name__ == "Linear"})
            raise BenchError(f"target_modules: the model has no module named {target!r} (its linear layers: "
                             f"{', '.join(linear)})")
    return get_peft_model(model, LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                            target_modules=list(lora.target_modules), task_type="CAUSAL_LM"))


# Configs: a method's dataclass holds `lora` and `optimization` and its own keys; files and profiles name every key
# flat (rank = 16, learning_rate = 1e-3, lmbda = 0.5), as train.json records them.

def flat(config: Any) -> dict[str, Any]:
    """Every key of a method's config at one level, as files, profiles and train.json name them."""
    values: dict[str, Any] = {}
    for f in fields(config):
        value = getattr(config, f.name)
        values.update(flat(value) if is_dataclass(value) else {f.name: value})
    return values


# The values a LoRA or Optimization key may take, where its type alone allows ones no trainer can run (a method's own
# keys are checked by its trainer's check_config).
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
              "inverse_sqrt")  # transformers' get_scheduler names that need no arguments of their own
RANGES: dict[str, tuple[Any, str]] = {
    "scheduler": (lambda v: v in SCHEDULERS, f"one of {', '.join(SCHEDULERS)}"),
    **dict.fromkeys(("learning_rate", "epochs"), (lambda v: 0 < v < float("inf"), "finite and above 0")),
    **dict.fromkeys(("warmup_ratio", "dropout"), (lambda v: 0 <= v < 1, "at least 0 and below 1")),
    "weight_decay": (lambda v: 0 <= v < float("inf"), "finite and at least 0"),
    **dict.fromkeys(("rank", "alpha", "batch_size", "gradient_accumulation", "max_length", "save_steps",
                     "max_new_tokens"),
                    (lambda v: v >= 1, "at least 1")),
}


def config_from_dict(values: dict[str, Any], where: str, cls: type, base: Any = None):
    """A method's config from flat keys over `base` (default: the method's defaults); an unknown key, a value of
    the wrong type or out of its range (RANGES) is an error naming the key."""
    base = base if base is not None else cls()
    defaults = flat(base)
    for key, value in values.items():
        if key not in defaults:
            raise BenchError(f"{where}: unknown key {key!r} (keys: {', '.join(defaults)})")
        expected = type(defaults[key]) if defaults[key] is not None else float
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) if expected is float else \
            isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value) if expected is tuple else \
            isinstance(value, expected) and not (expected is int and isinstance(value, bool))
        if not ok:
            raise BenchError(f"{where}: key {key!r} must be {expected.__name__}, got {type(value).__name__}")
        if key in RANGES and value is not None and not RANGES[key][0](value):
            raise BenchError(f"{where}: key {key!r} must be {RANGES[key][1]}, got {value!r}")
    merged = {**defaults, **{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}}
    kwargs = {}
    for f in fields(base):
        value = getattr(base, f.name)
        kwargs[f.name] = type(value)(**{g.name: merged[g.name] for g in fields(value)}) if is_dataclass(value) \
            else merged[f.name]
    return cls(**kwargs)


def load_config(path: Path | None, cls: type):
    """A method's config from a JSON or TOML file of flat keys (None: the defaults)."""
    if path is None:
        return cls()
    if not path.is_file():
        raise BenchError(f"--config {path}: no such file")
    try:
        values = tomllib.loads(path.read_text()) if path.suffix == ".toml" else json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise BenchError(f"--config {path}: not valid {'TOML' if path.suffix == '.toml' else 'JSON'} ({e})") from None
    if not isinstance(values, dict):
        raise BenchError(f"--config {path}: expected a table of keys")
    return config_from_dict(values, f"--config {path}", cls)


@dataclass(frozen=True)
class TrainJob:
    """One fine-tune as `bench train` is asked for it: every method's train function takes this and its config."""

    method: str
    task: str
    model: str  # the seed model: `default`, a shipped name, a directory or a Hub id
    out_dir: Path  # the checkpoint directory
    examples: list[TrainExample] = field(repr=False)
    data_sha256: str
    limit: int | None = None
    dtype: str = "auto"
    prompt_format: str = "chat"
    results_dir: Path = Path("results")  # its generation cache serves SDFT's distillation
    teacher: str | None = None  # gkd only
    teacher_adapter: str | None = None
    model_files: dict[str, str] | None = None  # the seed's weights and decoding files, hashed (model_files)
    teacher_files: dict[str, str] | None = None


def model_files(spec: str) -> dict[str, str]:
    """What a model's name does not pin: its weights, and the tokenizer, chat template and config that render and
    decode the training's prompts (a directory or Hub snapshot can change under the same name)."""
    model_dir = resolve_model_dir(spec)
    return {"weights_sha256": weights_sha256(model_dir), "decoding_sha256": decoding_sha256(model_dir)}


def train_job(method: str, task: str, model: str, name: str, results_dir: Path, data_dir: str | None,
              limit: int | None, dtype: str, prompt_format: str, teacher: str | None = None,
              teacher_adapter: str | None = None) -> TrainJob:
    """The job, its training examples read (the first `limit`) and checked."""
    if teacher_adapter and not (Path(teacher_adapter) / "adapter_model.safetensors").is_file():
        raise BenchError(f"--teacher-adapter {teacher_adapter}: not a PEFT adapter (needs adapter_config.json and "
                         f"adapter_model.safetensors)")
    examples, data_sha256 = load_train_examples(task, resolve_data_dir(data_dir), limit)
    return TrainJob(method, task, model, results_dir / "checkpoints" / name, examples, data_sha256, limit, dtype,
                    prompt_format, results_dir, teacher, teacher_adapter, model_files(model),
                    model_files(teacher) if teacher else None)


def identity(job: TrainJob, config: Any) -> dict[str, Any]:
    """What makes two trainings the same: a finished checkpoint with this identity is reused."""
    return {"method": job.method, "task": job.task, "model": job.model, "limit": job.limit, "dtype": job.dtype,
            "data_sha256": job.data_sha256, "config": json.loads(json.dumps(flat(config))),
            **({"prompt_format": job.prompt_format} if job.prompt_format != "chat" else {}),
            **({"teacher": job.teacher, "teacher_adapter_sha256": job.teacher_adapter and
                adapter_sha256(Path(job.teacher_adapter))} if job.teacher else {}),
            **({"model_files": job.model_files} if job.model_files else {}),
            **({"teacher_files": job.teacher_files} if job.teacher_files else {})}


FILES_KEYS = ("model_files", "teacher_files")  # recorded from 2026-12-06 on


def identity_forms(expected: dict[str, Any], job: TrainJob) -> list[dict[str, Any]]:
    """The identity as a checkpoint may have recorded it: today's; before the models' files were hashed (a checkpoint
    of then is judged on what it recorded); and, with a teacher adapter, before 2a3432b sorted its hash's module
    list."""
    before_files = {k: v for k, v in expected.items() if k not in FILES_KEYS}
    forms = [expected, before_files]
    if job.teacher_adapter:
        forms.append({**before_files, "teacher_adapter_sha256": unsorted_adapter_sha256(Path(job.teacher_adapter))})
    return forms


# The weight decay each method trained with before `weight_decay` was a key (2026-12-06): SFT's Trainer 0, the
# on-policy trainers torch AdamW's default 0.01.
EARLIER_WEIGHT_DECAY = {"gkd": 0.01, "onpolicy_sd": 0.01}


def recorded_identity(record: dict[str, Any]) -> dict[str, Any] | None:
    """A train.json's identity in today's names: checkpoints trained before `seed` became
    `training_seed`, or before `weight_decay` was recorded, stay valid under the settings they were trained with."""
    saved = record.get("identity")
    if saved and "seed" in saved.get("config", {}):
        config = {("training_seed" if k == "seed" else k): v for k, v in saved["config"].items()}
        saved = {**saved, "config": config}
    if saved and "config" in saved and "weight_decay" not in saved["config"]:
        saved = {**saved, "config": {**saved["config"],
                                     "weight_decay": EARLIER_WEIGHT_DECAY.get(saved.get("method"), 0.0)}}
    return saved


def trained_already(job: TrainJob, config: Any) -> bool:
    """True when the checkpoint is finished with this job's identity; one trained otherwise is an error."""
    done = job.out_dir / "train.json"
    if not done.is_file():
        return False
    if recorded_identity(json.loads(done.read_text())) not in identity_forms(identity(job, config), job):
        raise BenchError(f"checkpoint {job.out_dir.name} in {job.out_dir} was trained with other settings; choose "
                         f"another --name")
    return True


STARTED = "started.json"  # an unfinished training's identity: what its resume state was trained under
COMPUTED_IN = "computed_in"  # started.json: the dtype the unfinished training computes in


def begin_training(job: TrainJob, config: Any) -> None:
    """Record the identity an unfinished checkpoint resumes under, and the dtype `--dtype` resolved to here; resume
    state left by a training with other settings (or settings not recorded), or computed in another dtype (`auto` on
    a machine without bf16, the results directory copied), is an error, not a hybrid adapter recorded under this
    job's settings. Without resume state (a run that stopped on bad input before its first save) the new settings
    simply start."""
    from bench.generation.models import resolve_dtype

    expected = identity(job, config)
    computed_in = resolve_dtype(job.dtype)
    path = job.out_dir / STARTED
    if any(p.name != STARTED for p in job.out_dir.iterdir()) if job.out_dir.is_dir() else False:
        if not path.is_file():
            raise BenchError(f"checkpoint {job.out_dir.name} in {job.out_dir} holds an unfinished training whose "
                             f"settings were not recorded; delete it to train again, or choose another --name")
        started = json.loads(path.read_text())
        started_in = started.pop(COMPUTED_IN, computed_in)  # not recorded before 2026-12-06
        if recorded_identity({"identity": started}) not in identity_forms(expected, job):
            raise BenchError(f"checkpoint {job.out_dir.name} in {job.out_dir} holds an unfinished training with other "
                             f"settings; delete it to train again, or choose another --name")
        if started_in != computed_in:
            raise BenchError(f"checkpoint {job.out_dir.name} in {job.out_dir} holds an unfinished training computed in "
                             f"{started_in}, and --dtype {job.dtype} is {computed_in} here; resume it where it started, "
                             f"delete it to train again, or choose another --name")
        return
    write_json(path, {**expected, COMPUTED_IN: computed_in})


def provenance(job: TrainJob, config: Any) -> dict[str, Any]:
    """The train.json fields that trace an adapter: identity, package versions, the commit, the machine (bf16
    training rounds by CPU and thread count too), the command."""
    from bench.execution.runner import git_commit, package_versions
    from bench.machine import machine

    return {"identity": identity(job, config), "data_sha256": job.data_sha256, "packages": package_versions(),
            "git": git_commit(), "machine": machine(), "command": sys.argv}


def base_record(job: TrainJob, config: Any, model_dir: Path, weights_sha256: str, dtype: str) -> dict[str, Any]:
    """The train.json fields every method writes."""
    return {"method": job.method, "task": job.task, "capability": TRAINED_CAPABILITY.get(job.task),
            "model": job.model, "model_dir": str(model_dir), "weights_sha256": weights_sha256, "dtype": dtype,
            "prompt_format": job.prompt_format, "config": flat(config),
            "epochs": config.optimization.epochs_for(job.task), "examples": len(job.examples)}


def peak_memory_mb() -> float:
    """The peak resident memory since the process started or its stage began (bench.memory; on a GPU: the peak
    allocated), in MiB."""
    import torch

    if torch.cuda.is_available():
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return round(peak_rss_mib(), 1)


# The train log: one CSV row per optimizer step; a resumed run first drops the rows it will train again.

def append_log_row(path: Path, columns: list[str], row: list[Any]) -> None:
    """One row of train_log.csv, its header first when the file is new."""
    new = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.writer(f)
        if new:
            writer.writerow(columns)
        writer.writerow(row)


def keep_log_rows(path: Path, last_step: int) -> None:
    """Drop train_log.csv rows after the step training resumes from: those steps are trained (and logged) again. A
    row a kill cut short (fewer fields than the header, or none) is dropped too: rows are appended in place."""
    if not path.is_file():
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    kept = [row for row in rows[1:] if len(row) == len(rows[0]) and int(row[0]) <= last_step]
    if not kept:
        path.unlink()
        return
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        csv.writer(f).writerows(rows[:1] + kept)
    tmp.replace(path)


def last_logged_loss(path: Path) -> float | None:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return float(rows[-1]["loss"]) if rows else None


def plot_loss(log_path: Path, out_path: Path, title: str) -> None:
    """loss.png: training loss by optimizer step, from train_log.csv."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(log_path, newline="") as f:
        rows = list(csv.DictReader(f))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([int(r["step"]) for r in rows], [float(r["loss"]) for r in rows])
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_title(title)
    fig.tight_layout()
    tmp = out_path.with_name(f".{out_path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(out_path)


def save_adapter(model: Any, out_dir: Path, **kwargs: Any) -> None:
    """`model.save_pretrained` into a staging directory, then each file renamed into `out_dir`."""
    staging = out_dir / ".adapter-staging"
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging, **kwargs)
    for item in staging.iterdir():
        item.replace(out_dir / item.name)
    staging.rmdir()


def finish(out_dir: Path, record: dict[str, Any]) -> None:
    """loss.png, then train.json, atomically: its presence says the checkpoint is complete; then the resume state
    goes (a kill before train.json keeps it, so nothing is trained twice)."""
    if (out_dir / "train_log.csv").is_file():
        plot_loss(out_dir / "train_log.csv", out_dir / "loss.png", f"{record['method']} {record['task']}")
    write_json(out_dir / "train.json", record)
    for state in ("trainer", "state"):  # SFT's Trainer checkpoints, the on-policy trainers' state
        shutil.rmtree(out_dir / state, ignore_errors=True)
    (out_dir / STARTED).unlink(missing_ok=True)
