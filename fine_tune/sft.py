"""LoRA SFT with peft and transformers' Trainer: the study's hyper-parameters by default (methods.md section 1).

Batches are grouped by length (no padding waste beyond the batch); bf16 autocast where the hardware computes it.
A checkpoint directory holds the adapter (loadable by `peft.PeftModel.from_pretrained` and lm-eval's `peft=`),
`train.json`, `train_log.csv`; Trainer's own checkpoints under `trainer/` let an interrupted training resume,
and a finished one is not trained again.
"""
from __future__ import annotations

import csv
import json
import shutil
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from bench.models import is_plain, resolve_dtype, resolve_model_dir, weights_sha256
from bench.store import write_json
from bench.types import BenchError
from fine_tune.data import IGNORE_INDEX, TRAINED_CAPABILITY, TrainExample, tokenize

EPOCHS = {"gsm8k": 5, "openfunction": 5}  # the study's; 2 for every other task


@dataclass(frozen=True)
class SFTConfig:
    """The study's SFT settings: LoRA r 8, alpha 16, dropout 0.1 on q_proj and v_proj; lr 1e-4 cosine; batch 2 x
    gradient accumulation 4; epochs 5 for gsm8k and openfunction, else 2 (None: the task's)."""

    rank: int = 8
    alpha: int = 16
    dropout: float = 0.1
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    learning_rate: float = 1e-4
    scheduler: str = "cosine"
    warmup_ratio: float = 0.0  # a fraction of the training steps
    epochs: float | None = None
    batch_size: int = 2
    gradient_accumulation: int = 4
    max_length: int = 1024
    seed: int = 42
    save_steps: int = 50

    def epochs_for(self, task: str) -> float:
        return self.epochs if self.epochs is not None else EPOCHS.get(task, 2)


def config_from_dict(values: dict[str, Any], where: str, cls: type = SFTConfig):
    """A config (SFTConfig or a trainer's extension of it) from a file's keys; an unknown key or a value of the
    wrong type is an error naming the key."""
    known = {f.name: f for f in fields(cls)}
    defaults = cls()
    for key, value in values.items():
        if key not in known:
            raise BenchError(f"{where}: unknown key {key!r} (keys: {', '.join(known)})")
        expected = type(getattr(defaults, key)) if getattr(defaults, key) is not None else float
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) if expected is float else \
            isinstance(value, list) and all(isinstance(v, str) for v in value) if expected is tuple else \
            isinstance(value, expected) and not (expected is int and isinstance(value, bool))
        if not ok:
            raise BenchError(f"{where}: key {key!r} must be {expected.__name__}, got {type(value).__name__}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def load_config(path: Path | None, cls: type = SFTConfig):
    if path is None:
        return cls()
    if not path.is_file():
        raise BenchError(f"--config {path}: no such file")
    try:
        if path.suffix == ".toml":
            import tomllib

            values = tomllib.loads(path.read_text())
        else:
            values = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise BenchError(f"--config {path}: not valid {'TOML' if path.suffix == '.toml' else 'JSON'} ({e})") from None
    if not isinstance(values, dict):
        raise BenchError(f"--config {path}: expected a table of keys")
    return config_from_dict(values, f"--config {path}", cls)


def add_lora(model: Any, config: SFTConfig) -> Any:
    """The model with a fresh LoRA adapter of the config's settings: every trainer's student."""
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
                                            target_modules=list(config.target_modules), task_type="CAUSAL_LM"))


def _log_callback(path: Path, tokens_per_step: float):
    """Appends step, loss, lr and tokens/s (tokens per optimizer step taken at the mean example length) to
    train_log.csv as Trainer logs."""
    from transformers import TrainerCallback

    class LogCallback(TrainerCallback):
        last = (0, time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "loss" not in logs:
                return
            step, when = self.last
            now = time.perf_counter()
            rate = (state.global_step - step) * tokens_per_step / (now - when) if now > when else 0.0
            append_log_row(path, ["step", "loss", "lr", "tokens_per_s"],
                           [state.global_step, logs["loss"], logs.get("learning_rate"), round(rate, 1)])
            self.last = (state.global_step, now)

    return LogCallback()


def append_log_row(path: Path, columns: list[str], row: list[Any]) -> None:
    """One row of train_log.csv, its header first when the file is new."""
    new = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.writer(f)
        if new:
            writer.writerow(columns)
        writer.writerow(row)


def save_adapter(model: Any, out_dir: Path, **kwargs: Any) -> None:
    """`model.save_pretrained` into a staging directory, then each file renamed into `out_dir`."""
    staging = out_dir / ".adapter-staging"
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging, **kwargs)
    for item in staging.iterdir():
        item.replace(out_dir / item.name)
    staging.rmdir()


def checkpoint_step(path: Path) -> int:
    return int(path.name.rsplit("-", 1)[1])


def last_complete_checkpoint(trainer_dir: Path) -> Path | None:
    """The newest Trainer checkpoint saved completely (Trainer writes trainer_state.json last); newer ones, left
    half-written by a kill during a save, are removed."""
    checkpoints = sorted(trainer_dir.glob("checkpoint-*"), key=checkpoint_step)
    complete = [path for path in checkpoints if (path / "trainer_state.json").is_file()]
    last = complete[-1] if complete else None
    for path in checkpoints:
        if last is None or checkpoint_step(path) > checkpoint_step(last):
            shutil.rmtree(path)
    return last


def keep_log_rows(path: Path, last_step: int) -> None:
    """Drop train_log.csv rows after the step training resumes from: those steps are trained (and logged) again."""
    if not path.is_file():
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    kept = [row for row in rows[1:] if int(row[0]) <= last_step]
    if not kept:
        path.unlink()
        return
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        csv.writer(f).writerows(rows[:1] + kept)
    tmp.replace(path)


def train_sft(model_spec: str, task: str, examples: list[TrainExample], config: SFTConfig, out_dir: Path,
              dtype: str = "auto", extra: dict[str, Any] | None = None, prompt_format: str = "chat") -> dict[str, Any]:
    """Train a LoRA adapter on the examples' responses; returns the train.json record. Resumes from the last
    Trainer checkpoint in `out_dir/trainer` when there is one. `prompt_format` as in `bench eval`."""
    import torch
    from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer,
                              TrainingArguments, set_seed)
    from datasets import Dataset

    if not examples:
        raise BenchError(f"training task {task}: no training examples")
    dtype = resolve_dtype(dtype)
    model_dir = resolve_model_dir(model_spec)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    features = [tokenize(tokenizer, ex.messages, ex.response, config.max_length,
                         plain=is_plain(prompt_format, ex.template)) for ex in examples]
    features = [f for f in features if any(label != IGNORE_INDEX for label in f["labels"])]
    if not features:
        raise BenchError(f"training task {task}: every prompt is longer than max_length {config.max_length}")
    set_seed(config.seed)
    model = add_lora(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), config)
    trainer_dir = out_dir / "trainer"
    args = TrainingArguments(
        output_dir=str(trainer_dir), num_train_epochs=config.epochs_for(task), learning_rate=config.learning_rate,
        lr_scheduler_type=config.scheduler, warmup_steps=config.warmup_ratio,
        per_device_train_batch_size=config.batch_size, gradient_accumulation_steps=config.gradient_accumulation,
        train_sampling_strategy="group_by_length", bf16=dtype == "bfloat16", fp16=dtype == "float16", logging_steps=1,
        save_strategy="steps", save_steps=config.save_steps, save_total_limit=1, report_to=[], seed=config.seed,
        data_seed=config.seed, dataloader_num_workers=0, disable_tqdm=False, use_cpu=not torch.cuda.is_available())
    mean_length = sum(len(f["input_ids"]) for f in features) / len(features)
    log = _log_callback(out_dir / "train_log.csv", mean_length * config.batch_size * config.gradient_accumulation)
    trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_list(features), callbacks=[log],
                      data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX))
    checkpoint = last_complete_checkpoint(trainer_dir)
    keep_log_rows(out_dir / "train_log.csv", checkpoint_step(checkpoint) if checkpoint else 0)
    resume = checkpoint is not None
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    seconds = time.perf_counter() - started
    save_adapter(model, out_dir)
    trained_tokens = sum(len(f["input_ids"]) for f in features) * config.epochs_for(task)
    record = {"method": "sft", "task": task, "capability": TRAINED_CAPABILITY.get(task), "model": model_spec,
              "model_dir": str(model_dir), "weights_sha256": weights_sha256(model_dir), "dtype": dtype,
              "prompt_format": prompt_format, "config": asdict(config),
              "epochs": config.epochs_for(task), "examples": len(examples), "trained_examples": len(features),
              "steps": result.global_step, "final_loss": result.training_loss, "seconds": round(seconds, 2),
              "tokens_per_s": round(trained_tokens / seconds, 1) if not resume else None,
              "resumed": resume, **(extra or {})}
    return record


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


def finish(out_dir: Path, record: dict[str, Any]) -> None:
    """loss.png, then train.json last, atomically: its presence says the checkpoint is complete."""
    shutil.rmtree(out_dir / "trainer", ignore_errors=True)
    if (out_dir / "train_log.csv").is_file():
        plot_loss(out_dir / "train_log.csv", out_dir / "loss.png", f"{record['method']} {record['task']}")
    write_json(out_dir / "train.json", record)

