"""GKD, generalized knowledge distillation (Agarwal et al., ICLR 2024; methods.md section 5): the LoRA student
learns the teacher's next-token distribution, token by token over the full vocabulary, along completions that
are, with probability `lmbda` per micro-batch, the student's own samples (on-policy), else the dataset's responses
(or, `seq_kd`, the teacher's samples).

Temperature: samples are drawn at `temperature` (0.9). The loss compares the two distributions at temperature 1 by
default, as TRL's GKDTrainer does (its `compute_loss` never passes the temperature): the divergence is then the one
between the distributions the models decode from, and `temperature` only chooses which sequences are visited.
`temperature_in_loss = true` divides both models' logits by `temperature` in the loss too.

The teacher is any model with the student's tokenizer and vocabulary (checked: a mismatch is an error naming both)
plus an optional adapter, merged; its logits come from the engine's packed teacher-forced pass.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bench.generation.engine import Engine
from bench.generation.models import LoadedModel, load_model
from bench.types import BenchError
from fine_tune.common import LoRA, Optimization, TrainJob, base_record
from fine_tune.data import TrainExample
from fine_tune.divergence import generalized_jsd
from fine_tune.onpolicy import Method, Sequence, Student, check_fits, check_trainable, load_student, sample, \
    save_student, train_on_policy


@dataclass(frozen=True)
class GKDConfig:
    """The study's LoRA and optimisation (as SFT's) and TRL GKDConfig's defaults."""

    lora: LoRA = field(default_factory=LoRA)  # rank, alpha, dropout, target_modules
    optimization: Optimization = field(default_factory=Optimization)  # learning_rate, epochs, batch_size, ...
    max_new_tokens: int = 128  # per sampled completion
    temperature: float = 0.9  # sampling temperature
    lmbda: float = 0.5  # the probability that a micro-batch's completions are the student's own samples
    beta: float = 0.5  # the generalized JSD's mix: 0 forward KL(teacher || student), 1 reverse KL(student || teacher)
    temperature_in_loss: bool = False  # the loss at `temperature` (true) or at 1 (false, as TRL): module docstring
    seq_kd: bool = False  # off-policy micro-batches on the teacher's samples instead of the dataset's responses


def check_config(config: GKDConfig) -> None:
    for key in ("lmbda", "beta"):
        if not 0 <= getattr(config, key) <= 1:
            raise BenchError(f"gkd: {key} must be in [0, 1], got {getattr(config, key)}")
    if not config.temperature > 0:
        raise BenchError(f"gkd: temperature must be above 0, got {config.temperature}")


def check_same_vocabulary(student: Student, teacher: LoadedModel) -> None:
    """GKD compares the two distributions token by token: the teacher must index the student's vocabulary."""
    ours, theirs = student.tokenizer.get_vocab(), teacher.tokenizer.get_vocab()
    rows = (student.model.get_output_embeddings().weight.shape[0], teacher.model.get_output_embeddings().weight.shape[0])
    if ours != theirs or rows[0] != rows[1]:
        raise BenchError(f"--teacher {teacher.spec}: its vocabulary ({len(theirs)} tokens, {rows[1]} logits, "
                         f"{teacher.tokenizer.name_or_path}) is not the student's ({len(ours)} tokens, {rows[0]} "
                         f"logits, {student.tokenizer.name_or_path}); GKD needs a teacher with the same tokenizer")


def train_gkd(job: TrainJob, config: GKDConfig) -> dict[str, Any]:
    """Train the student's adapter by GKD from the job's teacher; returns the train.json record."""
    import torch

    check_config(config)
    examples, opt = job.examples, config.optimization
    check_trainable(job.task, examples, opt)
    if job.teacher is None:
        raise BenchError("bench train gkd: needs --teacher MODEL (and --teacher-adapter DIR for an adapter on it)")
    student = load_student(job.model, config.lora, opt.training_seed, job.dtype, job.prompt_format)
    teacher = load_model(job.teacher, job.teacher_adapter, student.dtype, job.prompt_format, option="--teacher-adapter")
    check_same_vocabulary(student, teacher)
    teacher_engine = Engine(teacher, cache=None)
    prompts = {ex.id: student.prompt_ids(ex) for ex in examples}
    for ex in examples:
        check_fits(ex, prompts[ex.id], config, "student")
    responses = {ex.id: student.response_ids(ex.response)[:opt.max_length - len(prompts[ex.id])]
                 for ex in examples}
    identity = f"gkd:{opt.training_seed}:{student.weights_sha256[:16]}"

    def completions(micro: list[list[TrainExample]], step: int, draws) -> list[list[Sequence]]:
        sources = ["student" if draw.random() < config.lmbda else "teacher" if config.seq_kd else "dataset"
                   for draw in draws]
        groups = [[Sequence(ex, prompts[ex.id], responses[ex.id], "dataset", prompts[ex.id]) for ex in chunk]
                  for chunk in micro]
        for source, engine in (("student", student.engine(f"{identity}:{step}")), ("teacher", teacher_engine)):
            todo = [s for group, kind in zip(groups, sources) if kind == source for s in group]
            for sequence, ids in zip(todo, sample(engine, todo, config, f"{identity}:{source}:{step}") if todo else []):
                sequence.completion, sequence.source = ids, source
        return groups

    def teacher_logits(sequences: list[Sequence]):
        return torch.cat(list(teacher_engine.logits_along([s.teacher_prompt for s in sequences],
                                                          [s.completion for s in sequences])))

    loss_temperature = config.temperature if config.temperature_in_loss else 1.0
    method = Method("gkd", completions, teacher_logits,
                    lambda student_logits, teacher: generalized_jsd(student_logits, teacher, config.beta,
                                                                    loss_temperature))
    result = train_on_policy(student, method, job.task, examples, opt, job.out_dir)
    save_student(student, job.out_dir)
    return {**base_record(job, config, student.model_dir, student.weights_sha256, student.dtype),
            "trained_examples": len(examples),
            "teacher": {"model": job.teacher, "adapter": job.teacher_adapter, "fingerprint": teacher.fingerprint,
                        "weights_sha256": teacher.weights_sha256, "adapter_sha256": teacher.adapter_sha256,
                        "dtype": teacher.dtype},
            "lmbda": config.lmbda, "beta": config.beta, "temperature": config.temperature,
            "loss_temperature": loss_temperature, "seq_kd": config.seq_kd, **result}
