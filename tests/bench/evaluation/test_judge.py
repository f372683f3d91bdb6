"""bench/evaluation/judge.py: alpaca_eval's annotator with our completion function; both orders; the cache; the API checks;
`bench eval --tasks alpaca_eval` and the head-to-head row of `bench compare`."""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest

from bench.generation.cache import Cache
from bench.cli import main
from bench.generation.engine import Engine
from bench.evaluation.judge import (Judge, LocalCompletions, Preference, annotator_config, check_openai_endpoint,
                         length_controlled, order_statistics, win_rates)
from bench.generation.models import load_model
from bench.types import BenchError

INSTRUCTIONS = ["Name a colour.", "Say hello.", "Count to three."]
FIRST = ["Blue.", "Hello!", "1, 2, 3."]
SECOND = ["", "Goodbye.", "one"]


class PrefersShown:
    """A completion function that always answers one identifier, with log-probabilities as OpenAI returns them."""

    def __init__(self, identifier: str = "M", p: float = 0.9):
        self.identifier, self.p, self.prompts = identifier, p, []

    def __call__(self, prompts, **_):
        self.prompts += prompts
        other = "m" if self.identifier == "M" else "M"
        top = [{"token": self.identifier, "logprob": math.log(self.p)}, {"token": other, "logprob": math.log(1 - self.p)}]
        return {"completions": [self.identifier] * len(prompts),
                "completions_all": [{"text": self.identifier, "logprobs": {"content": [{"top_logprobs": top}]}}
                                    for _ in prompts]}


def fake_judge(tmp_path, completions, orders="both") -> Judge:
    judge = Judge("weighted_alpaca_eval_gpt4_turbo", orders, cache=Cache(tmp_path / "cache.sqlite"))
    judge.completions = completions
    return judge


def test_both_orders_cancel_a_pure_position_bias(tmp_path):
    """A judge that always picks the second shown output prefers nothing once both orders are averaged: every
    verdict flips, and the first position wins 10% of the time."""
    prefs = fake_judge(tmp_path, PrefersShown("M", 0.9)).preferences(INSTRUCTIONS, FIRST, SECOND)
    assert [p.second for p in prefs] == pytest.approx([0.5] * 3)
    assert all(p.orders == pytest.approx((0.9, 0.1)) and p.flipped for p in prefs)
    stats = order_statistics(prefs)
    assert stats["flip_rate"] == 1.0 and stats["first_position_preference"] == pytest.approx(0.1)


def test_prompts_are_alpaca_evals_template_with_the_outputs_in_both_places(tmp_path):
    completions = PrefersShown()
    fake_judge(tmp_path, completions).preferences(INSTRUCTIONS[:1], FIRST[:1], ["Red."])
    given, swapped = completions.prompts
    assert "select the model that generated the best output" in given and '"instruction": """Name a colour."""' in given
    assert given.index("Blue.") < given.index("Red.") and swapped.index("Red.") < swapped.index("Blue.")


class PrefersText(PrefersShown):
    """A judge without position bias: it answers the identifier of whichever shown output is `text`."""

    def __init__(self, texts: list[str], p: float = 0.9):
        super().__init__("M", p)
        self.texts, self.swapped = texts, 0

    def __call__(self, prompts, **kwargs):
        answers = {"completions": [], "completions_all": []}
        for prompt in prompts:
            first = prompt.index('"model_identifier": "m"')
            second = prompt.index('"model_identifier": "M"')
            wanted = next(prompt.index(f'"""{text}"""', first) for text in self.texts if f'"""{text}"""' in prompt)
            self.identifier = "M" if wanted > second else "m"
            self.swapped += self.identifier == "m"
            one = super().__call__([prompt])
            for key in answers:
                answers[key] += one[key]
        return answers


def test_one_random_order_is_alpaca_evals_own_and_mapped_back_to_the_second_output(tmp_path):
    """orders=random: one judgment per pair, in alpaca_eval's seeded order. A judge that always prefers the second
    list's output, wherever it is shown, must read as preferring it on every pair: an order not mapped back would
    read 0.1 on each pair alpaca_eval swapped."""
    instructions = [f"Say {i}." for i in range(12)]
    first, second = [f"no {i}" for i in range(12)], [f"yes {i}" for i in range(12)]
    judge = PrefersText(second)
    prefs = fake_judge(tmp_path, judge, "random").preferences(instructions, first, second)
    assert 0 < judge.swapped < 12, "the seeded order swaps some pairs and not others"
    assert all(len(p.orders) == 1 for p in prefs) and [p.second for p in prefs] == pytest.approx([0.9] * 12)


def test_judgments_are_cached_so_a_killed_run_rejudges_only_what_is_missing(tmp_path):
    class DiesAfter(PrefersShown):
        def __call__(self, prompts, **kwargs):
            if len(self.prompts) >= 16:
                raise KeyboardInterrupt  # killed after the first chunk: 8 pairs, each in both orders
            return super().__call__(prompts, **kwargs)

    instructions = [f"Question {i}?" for i in range(12)]
    first, second = [f"a{i}" for i in range(12)], [f"b{i}" for i in range(12)]
    with pytest.raises(KeyboardInterrupt):
        fake_judge(tmp_path, DiesAfter()).preferences(instructions, first, second)
    rerun = PrefersShown()
    prefs = fake_judge(tmp_path, rerun).preferences(instructions, first, second)
    assert len(rerun.prompts) == 2 * 12 - 2 * 8, "the first chunk of 8 pairs (both orders) came from the cache"
    assert [p.second for p in prefs] == pytest.approx([0.5] * 12)


def test_unparsed_judgments_are_ties_and_counted(tmp_path):
    class Babbles(PrefersShown):
        def __call__(self, prompts, **kwargs):
            out = super().__call__(prompts, **kwargs)
            out["completions_all"] = [{"text": "The", "logprobs": {"content": [{"top_logprobs": [
                {"token": "The", "logprob": -0.1}]}]}} for _ in prompts]
            return out

    prefs = fake_judge(tmp_path, Babbles()).preferences(INSTRUCTIONS, FIRST, SECOND)
    assert all(p.failed and p.second == 0.5 for p in prefs)


def test_local_completions_read_the_identifiers_next_token_probabilities(tiny_model_dir, tmp_path):
    """Parsed by alpaca_eval's own logprob_parser, our completion gives P(m) / (P(m) + P(M)) of one forward pass."""
    import torch
    from alpaca_eval.completion_parsers import logprob_parser
    from alpaca_eval.utils import prompt_to_chatml

    model = load_model(str(tiny_model_dir), dtype="float32")
    local = LocalCompletions(model, Engine(model))
    prompt = "<|im_start|>system\nJudge.\n<|im_end|>\n<|im_start|>user\nWhich is better, m or M?\n<|im_end|>"
    out = local([prompt, prompt.replace("better", "worse")])
    [preference] = logprob_parser(out["completions_all"][0], numerator_token="m", denominator_tokens=["m", "M"],
                                  is_binarize=False)
    ids = model.tokenizer(model.render(prompt_to_chatml(prompt)), add_special_tokens=False, return_tensors="pt")
    with torch.inference_mode():
        p = torch.softmax(model.model(**ids).logits[0, -1].float(), -1)
    m, big_m = local.identifiers["m"], local.identifiers["M"]
    assert preference == pytest.approx(2 - float(p[m] / (p[m] + p[big_m])), abs=1e-4)
    assert out["completions_all"][0]["identifier_mass"] == pytest.approx(float(p[m] + p[big_m]), abs=1e-4)
    assert out["completions_all"][0] != out["completions_all"][1]


def test_the_short_judge_asks_its_own_prompt_and_reads_b_over_a(tiny_model_dir, tmp_path):
    """`short:MODEL`: our annotator config (a short prompt, identifiers A and B) through alpaca_eval's annotator;
    in each order P(B) / (P(A) + P(B)) of one forward pass on the prompt with the outputs in place."""
    import torch
    from alpaca_eval.utils import prompt_to_chatml

    from bench.evaluation.judge import SHORT_ANNOTATOR

    model = load_model(str(tiny_model_dir), dtype="float32")
    judge = Judge(f"short:{tiny_model_dir}", "both", model, Engine(model), Cache(tmp_path / "cache.sqlite"))
    template = (Path(SHORT_ANNOTATOR) / "prompt.txt").read_text()
    assert judge.identity()["template_sha256"] == hashlib.sha256(template.encode()).hexdigest()
    assert judge.identity()["annotator"] == "short_pairwise" and set(judge.completions.identifiers) == {"A", "B"}
    a, b = judge.completions.identifiers["A"], judge.completions.identifiers["B"]

    def p_b(first: str, second: str) -> float:
        prompt = template.replace("{instruction}", INSTRUCTIONS[1]).replace("{output_1}", first)
        ids = model.tokenizer(model.render(prompt_to_chatml(prompt.replace("{output_2}", second))),
                              add_special_tokens=False, return_tensors="pt")
        with torch.inference_mode():
            p = torch.softmax(model.model(**ids).logits[0, -1].float(), -1)
        return float(p[b] / (p[a] + p[b]))

    [preference] = judge.preferences(INSTRUCTIONS[1:2], FIRST[1:2], SECOND[1:2])
    assert preference.orders == pytest.approx((p_b(FIRST[1], SECOND[1]), 1 - p_b(SECOND[1], FIRST[1])), abs=1e-4)


def test_a_local_judges_cached_judgments_are_keyed_by_its_decoding_files_and_the_engine(tiny_model_dir, tmp_path,
                                                                                          monkeypatch):
    """The same weights under another chat template (a Hub revision), or log-probabilities from another engine,
    are judged again rather than served the judgments of before; the judge's identity (in every judged run's) stays."""
    from dataclasses import replace

    from bench.generation import engine

    model = load_model(str(tiny_model_dir), dtype="float32")
    cache = Cache(tmp_path / "cache.sqlite")

    def judged(m) -> tuple[dict, int]:
        judge = Judge(f"short:{tiny_model_dir}", "both", m, Engine(m), cache)
        asked, complete = [], judge.completions
        judge.completions = lambda prompts, **kwargs: (asked.extend(prompts), complete(prompts, **kwargs))[1]
        judge.preferences(INSTRUCTIONS[1:2], FIRST[1:2], SECOND[1:2])
        return judge.identity(), len(asked)

    identity, asked = judged(model)
    assert asked == 2 and judged(model) == (identity, 0), "the same judge again: both orders from the cache"
    assert judged(replace(model, decoding_sha256="0" * 64)) == (identity, 2)
    monkeypatch.setattr(engine, "ENGINE_VERSION", engine.ENGINE_VERSION + 1)
    assert judged(model) == (identity, 2)


def test_win_rate_is_alpaca_evals_with_ties_as_half():
    rates = win_rates([Preference(1.0, (1.0, 1.0)), Preference(0.0, (0.0, 0.0)), Preference(0.5, (0.5, 0.5)),
                       Preference(0.75, (1.0, 0.5))])
    assert rates["win_rate"] == pytest.approx(100 * 2.25 / 4) and rates["n_wins"] == 2 and rates["n_wins_base"] == 1


def test_length_controlled_win_rate_offline_is_unavailable_with_the_reason(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = length_controlled([0, 1], ["a", "b"], ["c", "d"], [Preference(1.0, ())] * 2, "judge", "model")
    assert result == {"unavailable": "needs df_gamed.csv from the Hub: offline mode (HF_HUB_OFFLINE)"}


def test_api_judge_without_key_or_endpoint_is_one_line(monkeypatch):
    for name in ("OPENAI_API_KEY", "OPENAI_API_KEYS", "OPENAI_CLIENT_CONFIG_PATH", "OPENAI_API_BASE"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(BenchError, match="no API key"):
        check_openai_endpoint("alpaca_eval_gpt4", "gpt-4")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("OPENAI_API_BASE", "http://127.0.0.1:9/v1")
    with pytest.raises(BenchError, match=r"endpoint http://127.0.0.1:9/v1 is unreachable"):
        check_openai_endpoint("alpaca_eval_gpt4", "gpt-4")


def test_unknown_annotator_config_is_one_line():
    with pytest.raises(BenchError, match="not an alpaca_eval annotator config"):
        annotator_config("gpt5_judge")
    assert annotator_config("alpaca_eval_gpt4").name == "configs.yaml"


@pytest.fixture
def judged_eval(tiny_model_dir, fixture_data, tmp_path):
    return ["eval", str(tiny_model_dir), "--tasks", "alpaca_eval", "--data-dir", str(fixture_data),
            "--results-dir", str(tmp_path / "results"), "--dtype", "float32", "--judge", f"local:{tiny_model_dir}"]


def test_alpaca_eval_through_eval_and_compare(capsys, judged_eval, tiny_model_dir, tmp_path):
    """The seed is judged against the references; a fine-tune also head to head against the seed's own outputs,
    which `bench compare` shows as the helpfulness row (the seed at 50% by construction)."""
    from conftest import make_adapter

    results = tmp_path / "results"
    assert main([*judged_eval, "--name", "seed"]) == 0
    assert main([*judged_eval, "--name", "tuned", "--adapter", str(make_adapter(tiny_model_dir, tmp_path / "a"))]) == 0
    seed_dir, tuned_dir = results / "runs" / "seed" / "alpaca_eval", results / "runs" / "tuned" / "alpaca_eval"
    outputs = json.loads((seed_dir / "model_outputs.json").read_text())
    assert [set(o) for o in outputs] == [{"instruction", "output", "generator"}] * 3  # alpaca_eval's own format
    assert outputs[0]["generator"] == "seed"
    record = json.loads((results / "runs" / "tuned" / "run.json").read_text())
    judge = record["identity"]["tasks"]["alpaca_eval"]["judge"]
    assert judge["spec"] == f"local:{tiny_model_dir}" and judge["orders"] == "both" and judge["fingerprint"]
    assert record["identity"]["tasks"]["alpaca_eval"]["seed_fingerprint"]
    metrics = json.loads((tuned_dir / "metrics.json").read_text())
    assert metrics["alpaca_eval"]["win_rate"] == pytest.approx(100 * metrics["mean"])
    assert metrics["order"]["pairs_in_both_orders"] == 6 and "vs_seed" in metrics["others"]
    rows = [json.loads(line) for line in (tuned_dir / "predictions.jsonl").read_text().splitlines()]
    seed_rows = [json.loads(line) for line in (seed_dir / "predictions.jsonl").read_text().splitlines()]
    assert [r["seed_output"] for r in rows] == [r["output"] for r in seed_rows]
    assert all(len(r["judge"]["orders"]) == 2 and 0 <= r["scores"]["vs_seed"] <= 1 for r in rows)
    assert "scores" not in seed_rows[0], "the seed is not judged against itself"
    capsys.readouterr()
    assert main(["compare", "seed", "tuned", "--results-dir", str(results)]) == 0
    out = capsys.readouterr().out
    assert "alpaca_eval_vs_seed" in out and "50.00 [50.00, 50.00]" in out
    report = json.loads((results / "reports" / "seed-vs-tuned" / "report.json").read_text())
    assert any(r["task"] == "alpaca_eval_vs_seed" and r["run"] == "tuned" for r in report["tasks"])


def test_runs_judged_by_different_judges_do_not_compare(capsys, judged_eval, other_tiny_model_dir, tmp_path):
    assert main([*judged_eval, "--name", "a"]) == 0
    other = [*judged_eval[:-1], f"local:{other_tiny_model_dir}"]
    assert main([*other, "--name", "b"]) == 0
    capsys.readouterr()
    assert main(["compare", "a", "b", "--results-dir", str(tmp_path / "results")]) == 2
    assert "were judged by different judges" in capsys.readouterr().err


@pytest.mark.parametrize(("judge", "message"), [
    ("local:/no/such/model", "--judge local:/no/such/model: model /no/such/model: not a model directory"),
    ("gpt5_judge", "--judge gpt5_judge: not an alpaca_eval annotator config"),
    ("weighted_alpaca_eval_gpt4_turbo", "--judge weighted_alpaca_eval_gpt4_turbo: no API key"),
])
def test_bad_judge_is_one_line_before_any_generation(capsys, judged_eval, tmp_path, monkeypatch, judge, message):
    for name in ("OPENAI_API_KEY", "OPENAI_API_KEYS", "OPENAI_CLIENT_CONFIG_PATH", "OPENAI_API_BASE"):
        monkeypatch.delenv(name, raising=False)
    assert main([*judged_eval[:-1], judge]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert len(Cache(tmp_path / "results" / "cache" / "generations.sqlite")) == 0, "nothing was generated"


def test_mirror_record_without_output_names_file_and_line(capsys, judged_eval, fixture_data, tmp_path):
    data = tmp_path / "data" / "alpaca_eval"
    data.mkdir(parents=True)
    lines = (fixture_data / "alpaca_eval" / "eval.jsonl").read_text().splitlines()
    record = json.loads(lines[1])
    del record["output"]
    (data / "eval.jsonl").write_text("\n".join([lines[0], json.dumps(record)]) + "\n")
    args = [*judged_eval]
    args[args.index("--data-dir") + 1] = str(tmp_path / "data")
    assert main(args) == 2
    assert f"{data / 'eval.jsonl'}:2: missing field 'output' for task alpaca_eval" in capsys.readouterr().err


def test_bench_judge_reads_alpaca_evals_model_outputs_and_agrees_with_the_run(capsys, judged_eval, tmp_path):
    """Outputs made elsewhere, judged by `bench judge`, give the same win rate as the run that made them."""
    assert main([*judged_eval, "--name", "seed"]) == 0
    run = tmp_path / "results" / "runs" / "seed" / "alpaca_eval"
    judge_args = judged_eval[judged_eval.index("--data-dir"):]
    capsys.readouterr()
    assert main(["judge", str(run / "model_outputs.json"), *judge_args, "--json", str(tmp_path / "j.json")]) == 0
    judged = json.loads((tmp_path / "j.json").read_text())
    assert judged["mean"] == pytest.approx(json.loads((run / "metrics.json").read_text())["mean"])
    assert "win rate of" in capsys.readouterr().out


@pytest.mark.parametrize(("entries", "message"), [
    ([{"instruction": "Not an AlpacaEval instruction.", "output": "x"}], "entry 0: instruction 'Not an AlpacaEval"),
    ([{"instruction": "x"}], "entry 0: missing or non-string 'output'"),
    ({"instruction": "x", "output": "y"}, "expected a non-empty JSON list"),
])
def test_model_outputs_that_do_not_match_the_references_are_one_line(capsys, judged_eval, tmp_path, entries, message):
    path = tmp_path / "model_outputs.json"
    path.write_text(json.dumps(entries))
    assert main(["judge", str(path), *judged_eval[judged_eval.index("--data-dir"):]]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_model_outputs_for_some_references_only_are_an_error(capsys, judged_eval, fixture_data, tmp_path):
    first = json.loads((fixture_data / "alpaca_eval" / "eval.jsonl").read_text().splitlines()[0])
    path = tmp_path / "model_outputs.json"
    path.write_text(json.dumps([{"instruction": first["instruction"], "output": "y"}]))
    assert main(["judge", str(path), *judged_eval[judged_eval.index("--data-dir"):]]) == 2
    assert "1 outputs for 1 distinct instructions of 3 references" in capsys.readouterr().err


def test_a_judged_run_carries_its_judges_agreement_measured_once_and_the_report_and_gate_say_it_does_not_inform(
        capsys, judged_eval, fixture_data, tiny_model_dir, tmp_path):
    """No agreement run of the judge: the first judged run measures a short one on the mirror's balanced set (here
    the 6 fixture pairs), the next reuses it; a random judge does not beat the longer output, so compare leaves
    helpfulness out of mean forgetting and says why, and the gate passes it as not gated even below a floor."""
    import shutil

    from conftest import FIXTURES, make_adapter
    from bench.evaluation.agreement import BALANCED_SET

    data = tmp_path / "data"
    shutil.copytree(fixture_data, data)
    (data / BALANCED_SET).parent.mkdir()
    shutil.copy(FIXTURES / "judgments.jsonl", data / BALANCED_SET)
    args = [*judged_eval, "--data-dir", str(data)]
    results = tmp_path / "results"
    assert main([*args, "--name", "seed"]) == 0
    said = " ".join(capsys.readouterr().out.split())  # the console wraps lines
    assert "judge: alpaca_eval: not informative: the judge agrees with AlpacaEval 2's judge on" in said
    [agreement_run] = [p.name for p in (results / "runs").iterdir() if p.name.startswith("agreement-")]
    assert json.loads((results / "runs" / agreement_run / "run.json").read_text())["identity"]["pairs"] == 6
    assert main([*args, "--name", "tuned", "--adapter", str(make_adapter(tiny_model_dir, tmp_path / "a"))]) == 0
    assert len(list((results / "runs").iterdir())) == 3, "the second run reuses the agreement run"
    carried = [json.loads((results / "runs" / run / "alpaca_eval" / "metrics.json").read_text())["judge_agreement"]
               for run in ("seed", "tuned")]
    assert carried[0] == carried[1] and carried[0]["run"] == agreement_run and carried[0]["n"] == 5
    assert carried[0]["informative"] is False and carried[0]["longer_output"] == 0.8  # 4 of the 5 decided pairs

    capsys.readouterr()
    assert main(["compare", "seed", "tuned", "--results-dir", str(results)]) == 0
    report = (results / "reports" / "seed-vs-tuned" / "report.md").read_text()
    assert "## Judges" in report and "alpaca_eval (judge agrees " in report and "; not informative)" in report
    assert "alpaca_eval_vs_seed: not informative:" in report
    capabilities = json.loads((results / "reports" / "seed-vs-tuned" / "report.json").read_text())["capabilities"]
    assert not any("forgetting" in c and c["forgetting"] is not None for c in capabilities), \
        "helpfulness, its only capability, judged by a judge that does not inform: no mean forgetting"

    capsys.readouterr()
    assert main(["gate", "tuned", "--baseline", "seed", "--results-dir", str(results),
                 "--require", "alpaca_eval=100", "--json", str(tmp_path / "gate.json")]) == 0
    gate = json.loads((tmp_path / "gate.json").read_text())
    assert {t["task"]: t["verdict"] for t in gate["tasks"]} == {"alpaca_eval": "not gated"}
    assert gate["tasks"][0]["reasons"].startswith("the judge agrees with AlpacaEval 2's judge on")
    out = capsys.readouterr().out
    assert "No regression in 0 gated tasks. Not gated: alpaca_eval" in out and "| not gated: the judge agrees" in out


def test_an_agreement_run_of_the_judge_is_what_a_judged_run_carries_and_none_skips_measuring(
        capsys, judged_eval, tiny_model_dir, tmp_path):
    from conftest import FIXTURES

    results = tmp_path / "results"
    assert main([*judged_eval, "--name", "unmeasured", "--judge-pairs", "none"]) == 0
    agreement = json.loads((results / "runs" / "unmeasured" / "alpaca_eval" / "metrics.json").read_text())["judge_agreement"]
    assert agreement["run"] is None and "unmeasured" in agreement["reason"] and not agreement["informative"]
    assert main(["judge", "agreement", "--pairs", str(FIXTURES / "judgments.jsonl"), "--judge", f"local:{tiny_model_dir}",
                 "--results-dir", str(results), "--dtype", "float32", "--name", "measured"]) == 0
    assert main([*judged_eval, "--name", "after", "--judge-pairs", "none"]) == 0
    agreement = json.loads((results / "runs" / "after" / "alpaca_eval" / "metrics.json").read_text())["judge_agreement"]
    assert agreement["run"] == "measured" and agreement["n"] == 5
    assert main([*judged_eval, "--name", "x", "--judge-pairs", str(tmp_path / "missing.jsonl")]) == 2
    assert capsys.readouterr().err.strip().endswith("--judge-pairs " + str(tmp_path / "missing.jsonl") + ": no such file")
