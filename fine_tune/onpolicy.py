"""The loop the on-policy distillation trainers share (gkd.py, onpolicy_sd.py): LoRA student, sampling through the
engine from the adapter weights of the current step, a token-mean divergence to a teacher, checkpoints that resume.

One optimizer step takes `batch_size x gradient_accumulation` examples. The method's `completions` gives each
micro-batch its sequences before any gradient is taken, so all of a step's samples are drawn in one batched engine
call, and the number of completion tokens in the step is known: each micro-batch's loss is its divergence summed
over its tokens, divided by the step's total, so the step's gradient is that of the mean over completion tokens
whatever the micro-batches' lengths (TRL issue 4719). The student's logits are computed at completion positions
only (the LM head never runs over the prompt).

Every random draw (the example order, each micro-batch's on-policy choice and dropout, each sample's seed) is
seeded from (seed, step, micro-batch), so a run killed and resumed from its last saved state ends with the adapter
of a run never stopped, and one data-parallel over N processes (torchrun, `accelerate launch`) with that of one
process: each rank takes every N-th micro-batch of a step, samples, scores and back-propagates only those (the
step's completion-token count summed over ranks first), the gradients are summed over ranks, and every rank takes
the same optimizer step. Rank 0 writes the log, the resumable state and the adapter.
"""
from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from bench.distributed import World, all_reduce_sum, barrier, world
from bench.generation.engine import Engine, progress_bar
from bench.generation.models import LoadedModel, is_plain, render_prompt, resolve_dtype, resolve_model_dir, weights_sha256
from bench.types import BenchError, GenerationConfig
from fine_tune.common import LoRA, Optimization, add_lora, append_log_row, keep_log_rows, last_logged_loss, \
    peak_memory_mb, save_adapter
from fine_tune.data import TrainExample
from fine_tune.divergence import kl

# A method's config here is any dataclass with `lora`, `optimization`, `max_new_tokens` and `temperature` (GKDConfig,
# OnPolicySDConfig).

LOG_COLUMNS = ["step", "loss", "kl_to_teacher", "lr", "tokens_per_s", "generated_tokens", "on_policy"]


@dataclass
class Sequence:
    """One training sequence: the student's prompt, the completion it learns on, where that came from, and the
    prompt the teacher reads before the same completion."""

    example: TrainExample
    prompt: list[int]
    completion: list[int]
    source: str  # "student" (its own sample), "dataset" (the reference response) or "teacher" (its sample)
    teacher_prompt: list[int]


@dataclass
class Student:
    """The LoRA student: `model` trains in float32 (bf16 autocast where the dtype says so); `inference` holds the
    same adapters on weights of the run's dtype, synchronised at the start of every step, and is what samples and
    what a self-teacher scores with (in bf16 the engine runs about twice as fast as in float32)."""

    model: Any
    inference: Any
    tokenizer: Any
    model_dir: Path
    weights_sha256: str
    dtype: str
    prompt_format: str

    def prompt_ids(self, example: TrainExample, messages=None) -> list[int]:
        text = render_prompt(self.tokenizer, list(messages or example.messages),
                             is_plain(self.prompt_format, example.template))
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def response_ids(self, response: str) -> list[int]:
        return self.tokenizer(response, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]

    def sync(self) -> None:
        """Copy every adapter's weights (the student's, an EMA teacher's) into the inference model."""
        import torch

        if self.inference is self.model:
            return
        target = dict(self.inference.named_parameters())
        with torch.no_grad():
            for name, param in self.model.named_parameters():
                if "lora_" in name:
                    target[name].copy_(param)

    def add_adapter(self, name: str, config: Any) -> None:
        for model in {id(self.model): self.model, id(self.inference): self.inference}.values():
            model.add_adapter(name, config)

    def engine(self, identity: str) -> Engine:
        """The engine over the inference model. `identity` names its weights (run and step): it seeds the samples,
        so a resumed run draws the same ones."""
        loaded = LoadedModel("student", self.model_dir, self.inference, self.tokenizer, self.dtype, "cpu",
                             self.weights_sha256, adapter="training", adapter_sha256=identity)
        return Engine(loaded, cache=None)


def load_student(model_spec: str, lora: LoRA, training_seed: int, dtype: str, prompt_format: str) -> Student:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = resolve_model_dir(model_spec)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    dtype = resolve_dtype(dtype)
    torch.manual_seed(training_seed)
    model = add_lora(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), lora)
    inference = model
    if dtype != "float32":
        inference = add_lora(AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)), lora)
        inference.eval()
        inference.requires_grad_(False)
    student = Student(model, inference, tokenizer, model_dir, weights_sha256(model_dir), dtype, prompt_format)
    student.sync()
    return student


def check_fits(example: TrainExample, prompt: list[int], config: Any, who: str) -> None:
    """A prompt with no room for `max_new_tokens` within `max_length` is an error naming the example, never a
    silent truncation of the prompt."""
    max_length = config.optimization.max_length
    room = max_length - config.max_new_tokens
    if len(prompt) > room:
        raise BenchError(f"training example {example.id}: the {who} prompt is {len(prompt)} tokens; max_length "
                         f"{max_length} leaves {room} beside max_new_tokens {config.max_new_tokens} "
                         f"(raise max_length)")


def sample(engine: Engine, sequences: list[Sequence], config: Any, identity: str) -> list[list[int]]:
    """One sample per sequence's prompt at the config's temperature, seeded from (identity, example)."""
    generation = GenerationConfig(max_new_tokens=config.max_new_tokens, temperature=config.temperature)
    seeds = [int(hashlib.sha256(f"{identity}:{s.example.id}".encode()).hexdigest()[:15], 16) for s in sequences]
    return engine.sample_ids([s.prompt for s in sequences], generation, seeds)


def step_order(n_examples: int, config: Optimization, task: str) -> list[list[int]]:
    """The example indices of each optimizer step: every epoch a fresh seeded shuffle; a fractional epoch takes
    the first part of its shuffle."""
    epochs = config.epochs_for(task)
    order: list[int] = []
    for epoch in range(math.ceil(epochs)):
        indices = list(range(n_examples))
        random.Random(config.training_seed + epoch).shuffle(indices)
        order += indices[:round(n_examples * min(1.0, epochs - epoch))]
    size = config.batch_size * config.gradient_accumulation
    return [order[i:i + size] for i in range(0, len(order), size)]


def check_trainable(task: str, examples: list[TrainExample], config: Optimization) -> None:
    """Before any model loads: examples to train on, and epochs that make at least one optimizer step of them."""
    if not examples:
        raise BenchError(f"training task {task}: no training examples")
    if not step_order(len(examples), config, task):
        raise BenchError(f"{config.epochs_for(task):g} epochs of {len(examples)} examples make no training step")


def student_logits(student: Student, sequences: list[Sequence]):
    """Logits [tokens, vocab] predicting each completion token, with gradients: one right-padded forward through
    the decoder, the LM head over completion positions only."""
    import torch

    device = student.model.device
    rows = [s.prompt + s.completion[:-1] for s in sequences]
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), student.tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    keep = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, (row, s) in enumerate(zip(rows, sequences)):
        ids[i, :len(row)] = torch.tensor(row)
        mask[i, :len(row)] = 1
        keep[i, len(s.prompt) - 1:len(row)] = True
    hidden = student.model.get_decoder()(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
    return student.model.get_output_embeddings()(hidden[keep.to(device)])


@dataclass
class Method:
    """What a trainer adds to the loop: its completions for a step's micro-batches, the teacher's logits along
    them (no gradient), the per-token divergence, and what to do after each optimizer step."""

    name: str
    completions: Callable[[list[list[TrainExample]], int, list[random.Random]], list[list[Sequence]]]  # a draw each
    teacher_logits: Callable[[list[Sequence]], Any]
    divergence: Callable[[Any, Any], Any]
    after_step: Callable[[], None] = lambda: None


def save_state(w: World, state_dir: Path, student: Student, optimizer, scheduler, step: int) -> None:
    """The trainable tensors (every adapter, EMA included), optimizer and schedule after `step`: written by rank 0
    beside, then renamed over the previous state, so a kill leaves one complete state."""
    import torch
    from safetensors.torch import save_file

    if not w.main:
        return

    tmp = state_dir.with_name(f".{state_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    lora = {n: p.detach().contiguous() for n, p in student.model.named_parameters() if "lora_" in n}
    save_file(lora, tmp / "lora.safetensors")
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optimizer.pt")
    (tmp / "step.json").write_text(json.dumps({"step": step}))
    old = state_dir.with_name(f".{state_dir.name}.old")
    if state_dir.exists():
        state_dir.replace(old)
    tmp.replace(state_dir)
    shutil.rmtree(old, ignore_errors=True)


def load_state(w: World, state_dir: Path, student: Student, optimizer, scheduler) -> int:
    """The step a saved state ends at (0 without one), its tensors loaded into the student and optimizer (every
    rank reads the one state rank 0 wrote)."""
    import torch
    from safetensors.torch import load_file

    old = state_dir.with_name(f".{state_dir.name}.old")
    if w.main and not state_dir.is_dir() and old.is_dir():  # killed between the two renames
        old.replace(state_dir)
    barrier(w)
    if not (state_dir / "step.json").is_file():
        return 0
    lora = load_file(state_dir / "lora.safetensors")
    with torch.no_grad():
        for name, param in student.model.named_parameters():
            if name in lora:
                param.copy_(lora[name])
    saved = torch.load(state_dir / "optimizer.pt", weights_only=False)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    return json.loads((state_dir / "step.json").read_text())["step"]


def train_on_policy(student: Student, method: Method, task: str, examples: list[TrainExample], config: Optimization,
                    out_dir: Path) -> dict[str, Any]:
    """Train the student's adapter; returns the train.json fields the loop knows (the trainer adds its own)."""
    import torch
    from transformers import get_scheduler

    model, w = student.model, world()
    steps = step_order(len(examples), config, task)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = get_scheduler(config.scheduler, optimizer, num_warmup_steps=math.ceil(config.warmup_ratio * len(steps)),
                              num_training_steps=len(steps))
    state_dir, log_path = out_dir / "state", out_dir / "train_log.csv"
    done = load_state(w, state_dir, student, optimizer, scheduler)
    if w.main:
        keep_log_rows(log_path, done)
    autocast = torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=student.dtype == "bfloat16")
    totals = Counter(dict.fromkeys(("generated_tokens", "trained_tokens", "completion_tokens", "sequences",
                                    "on_policy_micro_batches", "micro_batches"), 0))
    seconds = {"generation": 0.0, "teacher": 0.0, "training": 0.0}
    started = time.perf_counter()
    with progress_bar(w.main) as progress:
        bar = progress.add_task(f"{method.name} {task}", total=len(steps), completed=done, rate="")
        for step in range(done + 1, len(steps) + 1):
            step_started = time.perf_counter()
            batch = [examples[i] for i in steps[step - 1]]
            micro = [batch[i:i + config.batch_size] for i in range(0, len(batch), config.batch_size)]
            loss_sum, kl_sum, counts = step_gradients(student, method, w, config, step, micro, autocast, seconds)
            t = time.perf_counter()
            average_gradients(w, trainable)
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            lr = scheduler.get_last_lr()[0]
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            method.after_step()
            seconds["training"] += time.perf_counter() - t
            n_tokens = counts["completion"]
            totals.update(generated_tokens=counts["generated"], trained_tokens=counts["trained"],
                          completion_tokens=n_tokens, sequences=len(batch),
                          on_policy_micro_batches=counts["on_policy"], micro_batches=len(micro))
            elapsed = time.perf_counter() - step_started
            if w.main:
                append_log_row(log_path, LOG_COLUMNS, [
                    step, round(loss_sum / n_tokens, 6), round(kl_sum / n_tokens, 6), lr,
                    round(counts["trained"] / elapsed, 1), counts["generated"], round(counts["on_policy"] / len(micro), 3)])
            if step % config.save_steps == 0 and step < len(steps):
                save_state(w, state_dir, student, optimizer, scheduler, step)
            progress.update(bar, advance=1, rate=f"loss {loss_sum / n_tokens:.4f}")
    barrier(w)  # rank 0's last log row is written before anyone reads it
    return {"steps": len(steps), "resumed": done > 0, "resumed_from_step": done,
            "final_loss": last_logged_loss(log_path), "seconds": round(time.perf_counter() - started, 2),
            "world_size": w.size, **throughput(totals, seconds)}


def step_gradients(student: Student, method: Method, w: World, config: Optimization, step: int,
                   micro: list[list[TrainExample]], autocast, seconds: dict[str, float]) -> tuple[float, float, dict]:
    """This rank's gradients for its micro-batches of the step (every `w.size`-th); returns the step's summed loss,
    KL and counts over every rank."""
    import torch

    mine = w.shard(list(range(len(micro))))
    student.model.eval()
    student.sync()
    with torch.no_grad():
        t = time.perf_counter()
        micro_sequences = method.completions([micro[i] for i in mine], step, [
            random.Random(f"{config.training_seed}:{step}:{i}") for i in mine])
        seconds["generation"] += time.perf_counter() - t
    ours = step_counts(micro_sequences)
    n_tokens = int(all_reduce_sum(w, torch.tensor([ours["completion"]], dtype=torch.float64))[0])
    student.model.train()
    dropout = [config.training_seed * 1_000_003 + step * 1_009 + i for i in mine]
    loss_sum, kl_sum = loss_step(student, method, micro_sequences, n_tokens, autocast, seconds, dropout)
    summed = all_reduce_sum(w, torch.tensor([loss_sum, kl_sum, *ours.values()], dtype=torch.float64)).tolist()
    return summed[0], summed[1], dict(zip(ours, map(round, summed[2:])))


def step_counts(micro_sequences: list[list[Sequence]]) -> dict[str, int]:
    """This rank's share of a step's tokens and micro-batches, to be summed over ranks."""
    sequences = [s for group in micro_sequences for s in group]
    return {"completion": sum(len(s.completion) for s in sequences),
            "generated": sum(len(s.completion) for s in sequences if s.source != "dataset"),
            "trained": sum(len(s.prompt) + len(s.completion) for s in sequences),
            "on_policy": sum(all(s.source == "student" for s in group) for group in micro_sequences)}


def average_gradients(w: World, parameters: list[Any]) -> None:
    """Every rank's gradients summed: each rank's loss is already divided by the step's total completion tokens,
    so the sum is the gradient of the whole step's token mean. A rank with no micro-batch this step adds zeros."""
    import torch

    if w.size == 1:
        return
    for p in parameters:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = all_reduce_sum(w, torch.cat([p.grad.reshape(-1) for p in parameters]))
    offset = 0
    for p in parameters:
        p.grad.copy_(flat[offset:offset + p.numel()].view_as(p))
        offset += p.numel()


def loss_step(student: Student, method: Method, micro_sequences: list[list[Sequence]], n_tokens: int, autocast,
              seconds: dict[str, float], dropout_seeds: list[int]) -> tuple[float, float]:
    """Gradients of this rank's share of one optimizer step: per micro-batch the teacher's logits (no gradient),
    the student's (dropout seeded by the micro-batch), the divergence summed over tokens and divided by the step's
    completion tokens. Returns the summed loss and KL(teacher || student), for the log."""
    import torch

    loss_sum, kl_sum = 0.0, 0.0
    for sequences, seed in zip(micro_sequences, dropout_seeds):
        t = time.perf_counter()
        teacher = method.teacher_logits(sequences).float()
        seconds["teacher"] += time.perf_counter() - t
        t = time.perf_counter()
        torch.manual_seed(seed)
        with autocast:
            logits = student_logits(student, sequences)
        per_token = method.divergence(logits, teacher)
        (per_token.sum() / n_tokens).backward()
        loss_sum += float(per_token.detach().sum())
        with torch.no_grad():
            kl_sum += float(kl(torch.log_softmax(teacher, -1), torch.log_softmax(logits.float(), -1)).sum())
        seconds["training"] += time.perf_counter() - t
    return loss_sum, kl_sum


def throughput(totals: Counter, seconds: dict[str, float]) -> dict[str, Any]:
    """The train.json fields on where the time and tokens went."""
    return {"seconds_by_part": {k: round(v, 2) for k, v in seconds.items()},
            "fraction_on_policy": round(totals["on_policy_micro_batches"] / totals["micro_batches"], 4)
            if totals["micro_batches"] else None,
            "tokens_this_run": dict(totals), "peak_memory_mb": peak_memory_mb(),
            "tokens_per_s": round(totals["trained_tokens"] / seconds["training"], 1) if seconds["training"] else None,
            "generated_tokens_per_s": round(totals["generated_tokens"] / seconds["generation"], 1)
            if seconds["generation"] and totals["generated_tokens"] else None}


def save_student(student: Student, out_dir: Path) -> None:
    """Rank 0 saves the student's adapter (named `default`; an EMA teacher's is not saved); the resume state goes
    once train.json is written (fine_tune.common.finish)."""
    if world().main:
        save_adapter(student.model, out_dir, selected_adapters=["default"])
