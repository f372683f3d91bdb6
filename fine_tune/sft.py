"""SFT (methods.md section 1): a LoRA adapter trained on the task's responses with transformers' Trainer, at the
study's hyper-parameters by default.

Batches are grouped by length (no padding waste beyond the batch); bf16 autocast where the hardware computes it.
A checkpoint directory holds the adapter (loadable by `peft.PeftModel.from_pretrained` and lm-eval's `peft=`),
`train.json`, `train_log.csv`; Trainer's own checkpoints under `trainer/` let an interrupted training resume.

Data-parallel over N processes (torchrun, `accelerate launch`): the global batch stays `batch_size x
gradient_accumulation`; each process takes `batch_size` examples per micro-batch and accumulates
`gradient_accumulation / N` of them (N must divide it), the length-grouped order is drawn for the global batch, and
Trainer divides the loss by the step's label tokens over every process: each optimizer step sees the examples, and
takes the gradient, of the single-process run's. Rank 0 writes the log and the adapter.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.distributed import World, barrier, world
from bench.generation.models import is_plain, resolve_dtype, resolve_model_dir, weights_sha256
from bench.store import write_json
from bench.types import BenchError
from fine_tune.common import LoRA, Optimization, TrainJob, add_lora, append_log_row, base_record, keep_log_rows, \
    peak_memory_mb, save_adapter
from fine_tune.data import IGNORE_INDEX, TrainExample, tokenize


@dataclass(frozen=True)
class SFTConfig:
    lora: LoRA = field(default_factory=LoRA)  # rank, alpha, dropout, target_modules
    optimization: Optimization = field(default_factory=Optimization)  # learning_rate, epochs, batch_size, ...


def train_sft(job: TrainJob, config: SFTConfig, examples: list[TrainExample] | None = None) -> dict[str, Any]:
    """Train a LoRA adapter on the responses of `examples` (default: the job's); returns the train.json record.
    Resumes from the last Trainer checkpoint in `out_dir/trainer` when there is one."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, TrainingArguments, set_seed
    from datasets import Dataset

    examples = job.examples if examples is None else examples
    opt, w = config.optimization, world()
    if not examples:
        raise BenchError(f"training task {job.task}: no training examples")
    if opt.gradient_accumulation % w.size:
        raise BenchError(f"{w.size} processes: gradient_accumulation {opt.gradient_accumulation} must be a multiple of "
                         f"the number of processes (each takes batch_size {opt.batch_size} x gradient_accumulation / "
                         f"{w.size} examples of a step)")
    dtype = resolve_dtype(job.dtype)
    model_dir = resolve_model_dir(job.model)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    features = [tokenize(tokenizer, ex.messages, ex.response, opt.max_length,
                         plain=is_plain(job.prompt_format, ex.template)) for ex in examples]
    features = [f for f in features if any(label != IGNORE_INDEX for label in f["labels"])]
    if not features:
        raise BenchError(f"training task {job.task}: every prompt is longer than max_length {opt.max_length}")
    set_seed(opt.training_seed)
    model = add_lora(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), config.lora)
    trainer_dir = job.out_dir / "trainer"
    epochs = opt.epochs_for(job.task)
    args = TrainingArguments(
        output_dir=str(trainer_dir), num_train_epochs=epochs, learning_rate=opt.learning_rate,
        weight_decay=opt.weight_decay, lr_scheduler_type=opt.scheduler, warmup_steps=opt.warmup_ratio,
        per_device_train_batch_size=opt.batch_size, gradient_accumulation_steps=opt.gradient_accumulation // w.size,
        train_sampling_strategy="group_by_length", bf16=dtype == "bfloat16", fp16=dtype == "float16", logging_steps=1,
        save_strategy="steps", save_steps=opt.save_steps, save_total_limit=1, report_to=[], seed=opt.training_seed,
        data_seed=opt.training_seed, dataloader_num_workers=0, disable_tqdm=False,
        use_cpu=not torch.cuda.is_available())
    mean_length = sum(len(f["input_ids"]) for f in features) / len(features)
    log = _log_callback(job.out_dir / "train_log.csv", mean_length * opt.batch_size * opt.gradient_accumulation)
    orders = trainer_dir / EPOCH_ORDERS
    trainer = _global_batch_trainer(opt.batch_size * opt.gradient_accumulation, orders, w.main)(
        model=model, args=args, train_dataset=Dataset.from_list(features), callbacks=[log],
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX))
    checkpoint = last_complete_checkpoint(w, trainer_dir)
    if checkpoint is None and w.main:
        orders.unlink(missing_ok=True)  # drawn by a training that saved no step: this one draws its own
    barrier(w)
    if w.main:
        keep_log_rows(job.out_dir / "train_log.csv", checkpoint_step(checkpoint) if checkpoint else 0)
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    seconds = time.perf_counter() - started
    if w.main:
        save_adapter(model, job.out_dir)
    trained_tokens = sum(len(f["input_ids"]) for f in features) * epochs
    return {**base_record(job, config, model_dir, weights_sha256(model_dir), dtype),
            "trained_examples": len(features), "steps": result.global_step, "final_loss": result.training_loss,
            "seconds": round(seconds, 2), "tokens_per_s": round(trained_tokens / seconds, 1) if not checkpoint else None,
            "resumed": checkpoint is not None, "world_size": w.size, "peak_memory_mb": peak_memory_mb()}


EPOCH_ORDERS = "epoch_orders.json"  # under trainer/: each epoch's example order, as drawn


def _global_batch_trainer(global_batch: int, orders_path: Path, main: bool):
    """Trainer whose length-grouped order is drawn for the global batch, as one process draws it, whatever the
    number of processes (Trainer's own groups by the per-process share). Each epoch's order is kept in
    `orders_path`: Trainer restores the random state of a checkpoint only after it has drawn the resumed epoch's
    order, so a training resumed inside epoch 2 or later would otherwise take epoch 1's order, training some
    examples twice and others not at all."""
    from transformers import Trainer
    from transformers.trainer_pt_utils import LengthGroupedSampler

    class EpochOrderSampler(LengthGroupedSampler):
        epoch = 0

        def set_epoch(self, epoch: int) -> None:  # Trainer calls it before each epoch's iteration
            self.epoch = epoch

        def __iter__(self):
            drawn = list(super().__iter__())  # always drawn: the random state moves on as in an uninterrupted run
            kept = json.loads(orders_path.read_text()) if orders_path.is_file() else {}
            if str(self.epoch) in kept:
                return iter(kept[str(self.epoch)])
            if main:
                write_json(orders_path, {**kept, str(self.epoch): drawn})
            return iter(drawn)

    class GlobalBatchTrainer(Trainer):
        def _get_train_sampler(self, train_dataset=None):
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            return EpochOrderSampler(global_batch, dataset=dataset, model_input_name="input_ids")

    return GlobalBatchTrainer


def _log_callback(path: Path, tokens_per_step: float):
    """Appends step, loss, lr and tokens/s (tokens per optimizer step taken at the mean example length) to
    train_log.csv as Trainer logs."""
    from transformers import TrainerCallback

    class LogCallback(TrainerCallback):
        last = (0, time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "loss" not in logs or not state.is_world_process_zero:
                return
            step, when = self.last
            now = time.perf_counter()
            rate = (state.global_step - step) * tokens_per_step / (now - when) if now > when else 0.0
            append_log_row(path, ["step", "loss", "lr", "tokens_per_s"],
                           [state.global_step, logs["loss"], logs.get("learning_rate"), round(rate, 1)])
            self.last = (state.global_step, now)

    return LogCallback()


def checkpoint_step(path: Path) -> int:
    return int(path.name.rsplit("-", 1)[1])


def last_complete_checkpoint(w: World, trainer_dir: Path) -> Path | None:
    """The newest Trainer checkpoint saved completely (Trainer writes trainer_state.json last); newer ones, left
    half-written by a kill during a save, are removed (by rank 0, before any rank resumes)."""
    checkpoints = sorted(trainer_dir.glob("checkpoint-*"), key=checkpoint_step)
    complete = [path for path in checkpoints if (path / "trainer_state.json").is_file()]
    last = complete[-1] if complete else None
    for path in checkpoints:
        if w.main and (last is None or checkpoint_step(path) > checkpoint_step(last)):
            shutil.rmtree(path)
    barrier(w)
    return last
