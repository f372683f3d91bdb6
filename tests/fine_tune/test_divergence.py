"""fine_tune/divergence.py against TRL's implementations on the same inputs, and against KL computed by hand."""
from __future__ import annotations

import math

import pytest
import torch

from fine_tune.divergence import divergence, generalized_jsd, topk_jsd

TOLERANCE = 1e-5


def random_batch(seed: int = 0, batch: int = 3, length: int = 7, vocab: int = 50):
    """Logits [batch, length, vocab] for student and teacher, and labels with -100 at masked positions."""
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(batch, length, vocab, generator=g, dtype=torch.float64) * 2
    teacher = torch.randn(batch, length, vocab, generator=g, dtype=torch.float64) * 3
    labels = torch.randint(0, vocab, (batch, length), generator=g)
    labels[0, :3] = -100  # a prompt
    labels[-1, length - 2:] = -100  # padding
    return student, teacher, labels


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 0.9])
def test_generalized_jsd_equals_trls_gkd_loss(beta, temperature):
    from trl.experimental.gkd import GKDTrainer

    student, teacher, labels = random_batch(seed=int(beta * 10))
    theirs = GKDTrainer.generalized_jsd_loss(student.float(), teacher.float(), labels, beta=beta,
                                             temperature=temperature)
    mask = labels != -100
    ours = generalized_jsd(student[mask].float(), teacher[mask].float(), beta, temperature).mean()
    assert abs(float(ours) - float(theirs)) < TOLERANCE
    assert float(ours) > 0


def hand_kl(p_logits, q_logits) -> float:
    """KL(P || Q) of one position, term by term in Python floats."""
    z_p = math.log(sum(math.exp(x) for x in p_logits))
    z_q = math.log(sum(math.exp(x) for x in q_logits))
    return sum(math.exp(p - z_p) * ((p - z_p) - (q - z_q)) for p, q in zip(p_logits, q_logits))


def test_beta_0_is_forward_and_beta_1_reverse_kl_by_hand():
    student, teacher, _ = random_batch(batch=1, length=4, vocab=6)
    s, t = student[0], teacher[0]
    forward = [hand_kl(t[i].tolist(), s[i].tolist()) for i in range(4)]
    reverse = [hand_kl(s[i].tolist(), t[i].tolist()) for i in range(4)]
    assert generalized_jsd(s, t, 0.0).tolist() == pytest.approx(forward, abs=TOLERANCE)
    assert generalized_jsd(s, t, 1.0).tolist() == pytest.approx(reverse, abs=TOLERANCE)
    assert divergence("forward_kl", s, t).tolist() == pytest.approx(forward, abs=TOLERANCE)
    assert divergence("reverse_kl", s, t).tolist() == pytest.approx(reverse, abs=TOLERANCE)
    assert forward != pytest.approx(reverse, abs=1e-3)  # the direction matters on these logits


def test_jsd_is_zero_for_equal_distributions_and_bounded():
    student, teacher, _ = random_batch(batch=1, length=5)
    assert generalized_jsd(student[0], student[0], 0.5).abs().max() < 1e-6
    jsd = generalized_jsd(student[0], teacher[0], 0.5)
    assert torch.all(jsd > 0) and torch.all(jsd <= math.log(2) + 1e-6)  # JSD_0.5 is at most log 2


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_topk_jsd_equals_trls_sdft_topk_loss(beta):
    from trl.experimental.sdft.loss_utils import compute_topk_self_distillation_loss

    student, teacher, _ = random_batch(seed=3)
    theirs = compute_topk_self_distillation_loss(student.float(), teacher.float(), distillation_topk=10,
                                                 distillation_alpha=beta, distillation_add_tail=False)
    ours = topk_jsd(student.reshape(-1, 50).float(), teacher.reshape(-1, 50).float(), beta, k=10)
    assert torch.allclose(ours, theirs.reshape(-1), atol=TOLERANCE)
