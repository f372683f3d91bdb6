"""Distribution drift from the seed, with no judge (SDFT's thesis, measurable at any scale).

On held-out general instructions, the seed's own greedy responses are generated once (through the engine, so
cached); then, along each response, the evaluated model's mean per-token negative log-likelihood and the mean
per-token KL(seed || model) over the whole vocabulary. The seed is the evaluated model's base (the model without
its adapter): for the seed itself the KL is 0 and the NLL is its own.
"""
from __future__ import annotations

from typing import Any

from bench.engine import Engine
from bench.models import LoadedModel
from bench.types import Example, Task


def per_token_drift(seed: LoadedModel, model: LoadedModel, prompt: str, response: str,
                    ended: bool = True) -> tuple[float, float, int]:
    """(mean NLL of `model` on the response tokens, mean KL(seed || model) at those positions, token count).
    The end-of-sequence token is scored only where the seed `ended` the response with it, not where it was cut
    at the token limit."""
    import torch

    tokenizer = seed.tokenizer
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    response_ids += [tokenizer.eos_token_id] if ended else []
    ids = torch.tensor([prompt_ids + response_ids], device=model.device)
    positions = slice(len(prompt_ids) - 1, ids.shape[1] - 1)  # the logits that predict each response token
    with torch.no_grad():
        seed_logp = torch.log_softmax(seed.model(ids).logits[0, positions].float(), dim=-1)
        model_logp = seed_logp if model is seed else torch.log_softmax(model.model(ids).logits[0, positions].float(), -1)
    targets = torch.tensor(response_ids, device=model.device)
    nll = -model_logp.gather(1, targets[:, None]).squeeze(1)
    seed_p = seed_logp.exp()
    kl = torch.where(seed_p > 0, seed_p * (seed_logp - model_logp), 0.0).sum(-1)  # 0 log 0 = 0, not NaN
    return float(nll.mean()), float(kl.clamp_min(0).mean()), len(response_ids)


def evaluate_drift(task: Task, examples: list[Example], seed: LoadedModel, model: LoadedModel,
                   seed_engine: Engine, progress=None) -> list[dict[str, Any]]:
    """One row per instruction: the seed's greedy response (`output`), KL as the score, NLL beside it."""
    prompts = [seed.render(task.to_prompt(ex), task.template) for ex in examples]
    responses = seed_engine.generate(prompts, task.generation, progress, label=f"{task.name} (seed responses)")
    bar = progress.add_task(f"{task.name} (NLL, KL)", total=len(examples), rate="") if progress else None
    rows = []
    for ex, prompt, response in zip(examples, prompts, responses):
        nll, kl, n_tokens = per_token_drift(seed, model, prompt, response.text, response.finish == "eos")
        rows.append({"id": ex.id, "prompt": prompt, "output": response.text, "reference": None, "score": kl,
                     "scores": {"nll": nll}, "n_tokens": n_tokens})
        if progress is not None:
            progress.update(bar, advance=1)
    return rows
