"""Distribution drift from the seed, with no judge (SDFT's thesis, measurable at any scale).

On held-out general instructions, the seed's own greedy responses are generated once (through the engine, so
cached); then, along each response, the evaluated model's mean per-token negative log-likelihood and the mean
per-token KL(seed || model) over the whole vocabulary. The seed is the evaluated model's base (the model without
its adapter): for the seed itself the KL is 0 and the NLL is its own. Both models' teacher-forced passes go
through the engine (`Engine.logits_along`: packed, the shared prompt prefix computed once).
"""
from __future__ import annotations

from itertools import repeat
from typing import Any

from bench.generation.engine import Engine
from bench.types import Example, Task


def drift_scores(seed: Engine, model: Engine, pairs: list[tuple[str, str, bool]]) -> list[tuple[float, float, int]]:
    """Per (prompt, response, ended): (mean NLL of `model` on the response tokens, mean KL(seed || model) at those
    positions, token count). The end-of-sequence token is scored only where the seed `ended` the response with
    it, not where it was cut at the token limit."""
    import torch

    tokenizer = seed.model.tokenizer
    prompts = [tokenizer(p, add_special_tokens=False)["input_ids"] for p, _, _ in pairs]
    responses = [tokenizer(r, add_special_tokens=False)["input_ids"] + ([tokenizer.eos_token_id] if ended else [])
                 for _, r, ended in pairs]
    same = model.model is seed.model  # the seed's own run: one pass, KL exactly 0
    seed_logits = seed.logits_along(prompts, responses)
    model_logits = repeat(None) if same else model.logits_along(prompts, responses)
    scores = []
    for response, seed_row, model_row in zip(responses, seed_logits, model_logits):
        seed_logp = torch.log_softmax(seed_row.float(), dim=-1)
        model_logp = seed_logp if same else torch.log_softmax(model_row.float(), dim=-1)
        targets = torch.tensor(response, device=seed_logp.device)
        nll = -model_logp.gather(1, targets[:, None]).squeeze(1)
        seed_p = seed_logp.exp()
        kl = torch.where(seed_p > 0, seed_p * (seed_logp - model_logp), 0.0).sum(-1)  # 0 log 0 = 0, not NaN
        scores.append((float(nll.mean()), float(kl.clamp_min(0).mean()), len(response)))
    return scores


def evaluate_drift(task: Task, examples: list[Example], seed: Engine, model: Engine,
                   progress=None) -> list[dict[str, Any]]:
    """One row per instruction: the seed's greedy response (`output`), KL as the score, NLL beside it."""
    prompts = [seed.model.render(task.to_prompt(ex), task.template) for ex in examples]
    responses = seed.generate(prompts, task.generation, progress, label=f"{task.name} (seed responses)")
    bar = progress.add_task(f"{task.name} (NLL, KL)", total=len(examples), rate="") if progress else None
    scores = drift_scores(seed, model, [(p, r.text, r.finish == "eos") for p, r in zip(prompts, responses)])
    if progress is not None:
        progress.update(bar, advance=len(examples))
    return [{"id": ex.id, "prompt": prompt, "output": response.text, "reference": None, "score": kl,
             "scores": {"nll": nll}, "n_tokens": n_tokens}
            for ex, prompt, response, (nll, kl, n_tokens) in zip(examples, prompts, responses, scores)]
