"""On-policy self-distillation (Shenfeld et al. 2026, arXiv 2601.19897; methods.md section 6): the student, the
model without the demonstration, samples its own completion; the teacher, the model with the training example's
reference answer placed in its context, scores the same tokens; the loss is a per-token divergence between the two
along them. Forward KL(teacher || student) by default: the authors say every reported result used it
(idanshen/Self-Distillation issue 5); reverse KL and a top-k JSD are options.

The teacher's prompt is the student's with the demonstration after the instruction (DEMONSTRATION; TRL's default
template is "{prompt}\\n\\n{privileged_context}", the same placement without the framing sentences).
Teacher kinds: `ema` (default; the paper's and the 3-seed replication's): a second LoRA adapter that tracks the
student, `ema_rate` of the way after every optimizer step; `base`: the adapter switched off, the seed itself (no
second copy of the weights); `live`: the student's current weights, without gradient. A prompt that does not fit
`max_length` beside `max_new_tokens` is an error naming the example, never a silent truncation.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from bench.types import BenchError
from fine_tune.common import LoRA, Optimization, TrainJob, base_record
from fine_tune.data import TrainExample
from fine_tune.divergence import DIVERGENCES, divergence
from fine_tune.onpolicy import Method, Sequence, Student, check_fits, check_trainable, load_student, sample, \
    save_student, train_on_policy

DEMONSTRATION = ("{instruction}\n\nThis is an example of a correct response:\n{reference}\n\n"
                 "Now write a response of your own.")
TEACHER_KINDS = ("ema", "base", "live")


@dataclass(frozen=True)
class OnPolicySDConfig:
    """The study's LoRA and optimisation (as SFT's) plus the method's; sampling as TRL's SDFTTrainer."""

    lora: LoRA = field(default_factory=LoRA)  # rank, alpha, dropout, target_modules
    optimization: Optimization = field(default_factory=Optimization)  # learning_rate, epochs, batch_size, ...
    max_new_tokens: int = 256  # per sampled completion
    temperature: float = 1.0  # sampling temperature
    teacher_kind: str = "ema"  # one of TEACHER_KINDS (module docstring)
    ema_rate: float = 0.05  # the EMA teacher's update rate per optimizer step
    divergence: str = "forward_kl"  # one of fine_tune.divergence.DIVERGENCES
    topk: int = 100  # the support of topk_jsd


def check_config(config: OnPolicySDConfig) -> None:
    if config.teacher_kind not in TEACHER_KINDS:
        raise BenchError(f"onpolicy_sd: teacher_kind must be one of {', '.join(TEACHER_KINDS)}, got {config.teacher_kind!r}")
    if config.divergence not in DIVERGENCES:
        raise BenchError(f"onpolicy_sd: divergence must be one of {', '.join(DIVERGENCES)}, got {config.divergence!r}")
    if not 0 < config.ema_rate <= 1:
        raise BenchError(f"onpolicy_sd: ema_rate must be in (0, 1], got {config.ema_rate}")
    if not config.temperature > 0:
        raise BenchError(f"onpolicy_sd: temperature must be above 0, got {config.temperature}")


def teacher_messages(example: TrainExample) -> tuple:
    """The student's messages with the demonstration after the instruction in the user turn."""
    if not example.reference.strip():
        raise BenchError(f"training example {example.id}: no reference answer to place in the teacher's context")
    with_demo = DEMONSTRATION.format(instruction=example.instruction, reference=example.reference)
    *head, user = example.messages
    if example.instruction not in user["content"]:
        raise BenchError(f"training example {example.id}: the instruction is not in its user turn")
    return (*head, {**user, "content": user["content"].replace(example.instruction, with_demo, 1)})


def train_onpolicy_sd(job: TrainJob, config: OnPolicySDConfig) -> dict[str, Any]:
    """Train the student's adapter by on-policy self-distillation; returns the train.json record."""
    import torch

    check_config(config)
    examples, opt = job.examples, config.optimization
    check_trainable(job.task, examples, opt)
    student = load_student(job.model, config.lora, opt.training_seed, job.dtype, job.prompt_format)
    prompts = {ex.id: student.prompt_ids(ex) for ex in examples}
    teacher_prompts = {ex.id: student.prompt_ids(ex, teacher_messages(ex)) for ex in examples}
    for ex in examples:
        check_fits(ex, prompts[ex.id], config, "student")
        check_fits(ex, teacher_prompts[ex.id], config, "teacher")
    pairs = add_ema_teacher(student) if config.teacher_kind == "ema" else []
    identity = f"onpolicy_sd:{opt.training_seed}:{student.weights_sha256[:16]}"

    def completions(micro: list[list[TrainExample]], step: int, draws) -> list[list[Sequence]]:
        groups = [[Sequence(ex, prompts[ex.id], [], "student", teacher_prompts[ex.id]) for ex in chunk]
                  for chunk in micro]
        todo = [s for group in groups for s in group]
        for sequence, ids in zip(todo, sample(student.engine(f"{identity}:{step}"), todo, config, f"{identity}:{step}")):
            sequence.completion = ids
        return groups

    def after_step() -> None:
        with torch.no_grad():
            for ema, live in pairs:
                ema.lerp_(live, config.ema_rate)

    method = Method("onpolicy_sd", completions, teacher(student, config.teacher_kind, pairs),
                    lambda s, t: divergence(config.divergence, s, t, k=config.topk), after_step)
    result = train_on_policy(student, method, job.task, examples, opt, job.out_dir)
    save_student(student, job.out_dir)
    return {**base_record(job, config, student.model_dir, student.weights_sha256, student.dtype),
            "trained_examples": len(examples),
            "teacher": {"kind": config.teacher_kind, "ema_rate": config.ema_rate, "prompt": DEMONSTRATION},
            "divergence": config.divergence, "temperature": config.temperature, **result}


def add_ema_teacher(student: Student) -> list[tuple[Any, Any]]:
    """A second adapter, `ema`, starting as the student's and never trained by gradient; (ema, live) parameter pairs."""
    import torch

    student.add_adapter("ema", replace(student.model.peft_config["default"], inference_mode=True))
    params = dict(student.model.named_parameters())
    pairs = [(params[name.replace(".default.", ".ema.")], p) for name, p in params.items() if ".default." in name]
    with torch.no_grad():
        for ema, live in pairs:
            ema.copy_(live)
            ema.requires_grad_(False)
    return pairs


def teacher(student: Student, kind: str, pairs: list[tuple[Any, Any]]):
    """The teacher's logits along sequences (its own prompts, the student's completions), from the inference model
    with the kind's adapter state: `base` no adapter, `ema` the EMA adapter, `live` the student's."""
    import torch

    engine = student.engine("teacher")  # the inference model: its adapter state at call time decides

    def along(sequences: list[Sequence]):
        return torch.cat(list(engine.logits_along([s.teacher_prompt for s in sequences],
                                                  [s.completion for s in sequences])))

    def teacher_logits(sequences: list[Sequence]):
        model = student.inference
        training = model.training
        model.eval()  # no dropout in the teacher (the inference model is the training one in float32)
        try:
            if kind == "base":
                with model.disable_adapter():
                    return along(sequences)
            if kind == "ema":
                model.base_model.set_adapter("ema")
                try:
                    return along(sequences)
                finally:
                    model.base_model.set_adapter("default")
                    for ema, _ in pairs:  # set_adapter made the active adapter's weights trainable
                        ema.requires_grad_(False)
            return along(sequences)
        finally:
            model.train(training)

    return teacher_logits
