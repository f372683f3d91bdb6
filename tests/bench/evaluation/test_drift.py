"""bench/evaluation/drift.py: KL from the seed is zero for the seed itself and positive for an adapted model; NLL is the
model's own; `bench eval --tasks drift` and `bench compare` carry it."""
from __future__ import annotations

import json

import pytest

from bench.cli import main
from bench.evaluation.drift import drift_scores
from bench.generation.engine import Engine
from bench.generation.models import load_model


def test_seed_has_no_drift_and_an_adapter_has_some(tiny_model_dir, tmp_path):
    from conftest import make_adapter

    seed = load_model(str(tiny_model_dir), dtype="float32")
    tuned = load_model(str(tiny_model_dir), str(make_adapter(tiny_model_dir, tmp_path / "adapter")), "float32")
    prompt = "<|im_start|>user\nhi<|im_end|>\n"
    [(nll, kl, n)] = drift_scores(Engine(seed), Engine(seed), [(prompt, "hello there", True)])
    assert kl == 0.0 and nll > 0 and n >= 2
    [(nll_tuned, kl_tuned, _), (_, _, n_cut)] = drift_scores(
        Engine(seed), Engine(tuned), [(prompt, "hello there", True), (prompt, "hello there", False)])
    assert kl_tuned > 0 and nll_tuned != pytest.approx(nll)
    assert n_cut == n - 1, "a response cut at the token limit has no end-of-sequence token to score"


def test_packed_passes_equal_one_forward_per_response(tiny_model_dir, tmp_path):
    """The engine's teacher-forced passes (shared prefix, packed, no padding) give each response's own numbers."""
    import torch
    from conftest import make_adapter

    seed = load_model(str(tiny_model_dir), dtype="float32")
    tuned = load_model(str(tiny_model_dir), str(make_adapter(tiny_model_dir, tmp_path / "adapter")), "float32")
    prompts = [f"<|im_start|>system\nAnswer.<|im_end|>\n<|im_start|>user\n{q}<|im_end|>\n" for q in ("hi", "2 + 2?", "x")]
    pairs = [(p, r, ended) for p, r, ended in zip(prompts, ["hello there", "4", "y z"], [True, False, True])]
    packed = drift_scores(Engine(seed), Engine(tuned), pairs)
    seed_engine, tuned_engine = Engine(seed), Engine(tuned)
    seed_engine.packed = tuned_engine.packed = False
    one_by_one = drift_scores(seed_engine, tuned_engine, pairs)
    for (nll, kl, n), (nll_1, kl_1, n_1) in zip(packed, one_by_one):
        assert n == n_1 and nll == pytest.approx(nll_1, abs=1e-5) and kl == pytest.approx(kl_1, abs=1e-6)
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled(), "training after drift still has grads"


def test_kl_is_finite_where_both_models_rule_a_token_out(tiny_model_dir, tmp_path):
    """0 log 0 = 0: a vocabulary entry at -inf in both models (a masked token) adds nothing, not NaN."""
    import math

    import torch
    from conftest import make_adapter

    seed = load_model(str(tiny_model_dir), dtype="float32")
    tuned = load_model(str(tiny_model_dir), str(make_adapter(tiny_model_dir, tmp_path / "adapter")), "float32")
    for loaded in (seed, tuned):
        loaded.model.lm_head.register_forward_hook(lambda module, args, out: out.index_fill(-1, torch.tensor([5]),
                                                                                             float("-inf")))
    [(_, kl, _)] = drift_scores(Engine(seed), Engine(tuned), [("<|im_start|>user\nhi<|im_end|>\n", "hello there", True)])
    assert math.isfinite(kl) and kl > 0


def test_drift_task_through_eval_and_compare(capsys, tiny_model_dir, fixture_data, tmp_path):
    from conftest import make_adapter

    adapter = make_adapter(tiny_model_dir, tmp_path / "adapter")
    base = ("eval", str(tiny_model_dir), "--tasks", "drift", "--dtype", "float32", "--data-dir", str(fixture_data),
            "--results-dir", str(tmp_path / "results"))
    assert main([*base, "--name", "seed"]) == 0
    assert main([*base, "--name", "tuned", "--adapter", str(adapter)]) == 0
    runs = tmp_path / "results" / "runs"
    seed_rows = [json.loads(line) for line in (runs / "seed" / "drift" / "predictions.jsonl").open()]
    tuned_rows = [json.loads(line) for line in (runs / "tuned" / "drift" / "predictions.jsonl").open()]
    assert len(seed_rows) == 3 and all(r["score"] == 0.0 for r in seed_rows)
    assert [r["output"] for r in seed_rows] == [r["output"] for r in tuned_rows]  # both along the seed's responses
    assert all(r["score"] > 0 for r in tuned_rows)
    metrics = json.loads((runs / "tuned" / "drift" / "metrics.json").read_text())
    assert metrics["metric"] == "kl" and metrics["others"]["nll"]["n"] == 3
    capsys.readouterr()
    assert main(["compare", "seed", "tuned", "--results-dir", str(tmp_path / "results")]) == 0
    assert "drift" in capsys.readouterr().out


def test_kl_and_nll_equal_an_independent_computation(tiny_model_dir, tmp_path):
    """Against plain transformers and peft, one forward per sequence: NLL is the model's cross-entropy on the
    response tokens (as `labels` computes it) and KL is torch's kl_div of the two next-token distributions."""
    import torch
    import torch.nn.functional as F
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from conftest import make_adapter

    adapter = make_adapter(tiny_model_dir, tmp_path / "adapter")
    seed = load_model(str(tiny_model_dir), dtype="float32")
    tuned = load_model(str(tiny_model_dir), str(adapter), "float32")
    prompt, response = "<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n", "Blue, like the sea."
    [(nll, kl, n)] = drift_scores(Engine(seed), Engine(tuned), [(prompt, response, True)])

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = torch.tensor([prompt_ids + response_ids])
    labels = torch.tensor([[-100] * len(prompt_ids) + response_ids])
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        seed_logits = base(ids).logits[0, len(prompt_ids) - 1:-1]
        peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapter)
        out = peft(ids, labels=labels)
        tuned_logits = out.logits[0, len(prompt_ids) - 1:-1]
    expected_kl = F.kl_div(F.log_softmax(tuned_logits, -1), F.log_softmax(seed_logits, -1), log_target=True,
                           reduction="none").sum(-1).mean()
    assert n == len(response_ids)
    assert nll == pytest.approx(float(out.loss), abs=1e-5) and kl == pytest.approx(float(expected_kl), abs=1e-6)
