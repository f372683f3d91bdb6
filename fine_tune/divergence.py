"""Per-token divergences between a teacher's and a student's next-token distributions (GKD, on-policy
self-distillation). Inputs are logits [tokens, vocab] at the completion positions only; each function returns one
value per token, summed over the vocabulary, so that a trainer can take the mean over every completion token of an
optimizer step (gradient accumulation included) by summing and dividing once.

`generalized_jsd` is GKD's (methods.md section 5) and computes what `trl.experimental.gkd.GKDTrainer.
generalized_jsd_loss` computes (tests/fine_tune/test_divergence.py): JSD_beta = beta KL(T || M) + (1 - beta)
KL(S || M) with M = beta T + (1 - beta) S mixed in log space; beta 0 is defined as the forward KL(T || S) and beta 1
as the reverse KL(S || T), where the mixture formula itself would vanish.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where a divergence is computed: `bench` starts without it
    import torch

DIVERGENCES = ("forward_kl", "reverse_kl", "topk_jsd")  # on-policy self-distillation's choices


def kl(p_log: torch.Tensor, q_log: torch.Tensor) -> torch.Tensor:
    """KL(P || Q) per row from log-probabilities."""
    return (p_log.exp() * (p_log - q_log)).sum(-1)


def generalized_jsd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float,
                    temperature: float = 1.0) -> torch.Tensor:
    """JSD_beta(teacher || student) per token, both distributions at `temperature`."""
    import torch.nn.functional as F

    student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return jsd_from_log_probs(student, teacher, beta)


def jsd_from_log_probs(student: torch.Tensor, teacher: torch.Tensor, beta: float) -> torch.Tensor:
    import torch

    if beta == 0:
        return kl(teacher, student)
    if beta == 1:
        return kl(student, teacher)
    mixture = torch.logaddexp(student + torch.log1p(torch.tensor(-beta)), teacher + torch.log(torch.tensor(beta)))
    return beta * kl(teacher, mixture) + (1 - beta) * kl(student, mixture)


def topk_jsd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float = 0.5, k: int = 100,
             temperature: float = 1.0) -> torch.Tensor:
    """JSD_beta on the student's top-k tokens, both distributions renormalised over them: TRL SDFTTrainer's
    `topk_logits` mode without the tail bucket (its default)."""
    import torch
    import torch.nn.functional as F

    student = student_logits.float() / temperature
    teacher = teacher_logits.float() / temperature
    top_student, index = torch.topk(student, k=min(k, student.shape[-1]), dim=-1)
    return jsd_from_log_probs(F.log_softmax(top_student, dim=-1),
                              F.log_softmax(torch.gather(teacher, -1, index), dim=-1), beta)


def divergence(name: str, student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
               k: int = 100) -> torch.Tensor:
    """One of DIVERGENCES per token: forward KL(T || S), reverse KL(S || T), or the top-k JSD at beta 0.5."""
    if name == "topk_jsd":
        return topk_jsd(student_logits, teacher_logits, 0.5, k, temperature)
    return generalized_jsd(student_logits, teacher_logits, 0.0 if name == "forward_kl" else 1.0, temperature)
