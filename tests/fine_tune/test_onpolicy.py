"""fine_tune/onpolicy.py, the loop the on-policy trainers share: the student's logits at completion positions equal a
plain forward's, the step order is seeded and covers every example, and a prompt with no room is refused."""
from __future__ import annotations

import pytest
import torch

from bench.types import BenchError
from fine_tune.common import LoRA, Optimization
from fine_tune.data import load_train_examples
from fine_tune.onpolicy import Sequence, check_fits, load_student, step_order, student_logits


def test_student_logits_are_a_plain_forwards_at_each_completion_position(tiny_model_dir, fixture_data):
    """Right-padded sequences of different lengths through the decoder, the LM head at completion positions only:
    row for row, the logits transformers' own forward gives each sequence alone, predicting each completion token."""
    student = load_student(str(tiny_model_dir), LoRA(rank=4), 0, "float32", "chat")
    with torch.no_grad():
        for name, p in student.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # a trained adapter, so the LoRA path counts
    student.model.eval()
    examples, _ = load_train_examples("gsm8k", fixture_data, 3)
    sequences = [Sequence(ex, student.prompt_ids(ex), student.response_ids(ex.response)[:k], "dataset", [])
                 for ex, k in zip(examples, (5, 1, 9))]
    with torch.no_grad():
        ours = student_logits(student, sequences)
        expected = []
        for s in sequences:
            logits = student.model(input_ids=torch.tensor([s.prompt + s.completion])).logits[0]
            expected.append(logits[len(s.prompt) - 1:len(s.prompt) + len(s.completion) - 1])
    assert ours.shape == (5 + 1 + 9, student.model.config.vocab_size)
    torch.testing.assert_close(ours, torch.cat(expected), atol=1e-5, rtol=1e-5)


def test_step_order_is_seeded_and_every_epoch_sees_every_example_once():
    config = Optimization(batch_size=2, gradient_accumulation=2, epochs=2, training_seed=7)
    steps = step_order(10, config, "gsm8k")
    assert steps == step_order(10, config, "gsm8k") and steps != step_order(10, Optimization(
        batch_size=2, gradient_accumulation=2, epochs=2, training_seed=8), "gsm8k")
    flat = [i for step in steps for i in step]
    assert sorted(flat[:10]) == sorted(flat[10:]) == list(range(10)) and [len(s) for s in steps] == [4] * 5
    half = step_order(10, Optimization(batch_size=2, gradient_accumulation=2, epochs=1.5, training_seed=7), "gsm8k")
    assert sum(map(len, half)) == 15


def test_a_prompt_without_room_for_the_completion_is_refused(fixture_data):
    from fine_tune.gkd import GKDConfig

    [example], _ = load_train_examples("gsm8k", fixture_data, 1)
    config = GKDConfig(optimization=Optimization(max_length=100), max_new_tokens=64)
    check_fits(example, list(range(36)), config, "student")
    with pytest.raises(BenchError, match="training example 0: the student prompt is 37 tokens; max_length 100 leaves 36"):
        check_fits(example, list(range(37)), config, "student")


def test_the_loss_step_weighs_every_completion_token_alike_however_the_micro_batches_split_them(tiny_model_dir,
                                                                                               fixture_data):
    """loss_step divides each micro-batch's summed divergence by the step's completion tokens: micro-batches of 3
    and 40 tokens give the gradient of one batch of 43, and that gradient is the token mean's (a mean per
    micro-batch would weigh the two 50/50)."""
    from contextlib import nullcontext

    from fine_tune.divergence import generalized_jsd
    from fine_tune.onpolicy import Method, loss_step

    student = load_student(str(tiny_model_dir), LoRA(rank=4, dropout=0.0), 0, "float32", "chat")
    examples, _ = load_train_examples("gsm8k", fixture_data, 2)
    short, long = (Sequence(ex, student.prompt_ids(ex), [5 + i % 50 for i in range(k)], "student", [])
                   for ex, k in zip(examples, (3, 40)))
    vocab = student.model.config.vocab_size
    teacher = {id(short): torch.randn(3, vocab, generator=torch.Generator().manual_seed(1)),
               id(long): torch.randn(40, vocab, generator=torch.Generator().manual_seed(2))}
    method = Method("test", None, lambda sequences: torch.cat([teacher[id(s)] for s in sequences]),
                    lambda logits, t: generalized_jsd(logits, t, 0.5))
    trainable = [p for p in student.model.parameters() if p.requires_grad]

    def gradients(micro_sequences):
        for p in trainable:
            p.grad = None
        seconds = {"teacher": 0.0, "training": 0.0}
        loss_sum, _ = loss_step(student, method, micro_sequences, 43, nullcontext(), seconds, [0] * len(micro_sequences))
        return loss_sum, [p.grad.clone() for p in trainable]

    student.model.train()
    split_loss, split = gradients([[short], [long]])
    whole_loss, whole = gradients([[short, long]])
    for p in trainable:
        p.grad = None
    generalized_jsd(student_logits(student, [short, long]), torch.cat([teacher[id(short)], teacher[id(long)]]),
                    0.5).mean().backward()  # the token mean, by plain autograd
    mean = [p.grad.clone() for p in trainable]
    assert split_loss == pytest.approx(whole_loss, rel=1e-5)
    assert any(g.abs().max() > 0 for g in whole)
    for a, b, c in zip(split, whole, mean):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-5)
        torch.testing.assert_close(b, c, atol=1e-7, rtol=1e-5)
