"""bench/evaluation/lmeval.py: our knowledge numbers are lm-eval's numbers, and lm-eval's own command line agrees."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bench.cli import main
from bench.evaluation.lmeval import write_configs
from tasks.knowledge import arc_easy


def bench(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow  # over 10 s here: left out by make test-fast
def test_lm_eval_command_line_with_its_hf_backend_gives_the_same_answers_and_log_likelihoods(capsys, tiny_model_dir, fixture_data, tmp_path):
    configs, out_dir = tmp_path / "configs", tmp_path / "lm_eval_out"
    configs.mkdir()
    write_configs([arc_easy], fixture_data, configs)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    subprocess.run([sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
                    f"pretrained={tiny_model_dir},dtype=float32", "--device", "cpu", "--tasks", "forgetbench_arc_easy",
                    "--include_path", str(configs), "--limit", "20", "--batch_size", "8", "--log_samples",
                    "--output_path", str(out_dir)], check=True, env=env, capture_output=True, timeout=600)
    results = json.loads(next(out_dir.rglob("results_*.json")).read_text())["results"]["forgetbench_arc_easy"]
    samples = [json.loads(line) for line in next(out_dir.rglob("samples_forgetbench_arc_easy_*.jsonl")).open()]
    theirs = {str(s["doc_id"]): max(range(len(s["filtered_resps"])), key=lambda i: float(s["filtered_resps"][i][0]))
              for s in samples}
    their_loglikelihoods = {str(s["doc_id"]): [float(r[0]) for r in s["filtered_resps"]] for s in samples}

    code, _, err = bench(capsys, "eval", str(tiny_model_dir), "--tasks", "arc_easy", "--limit", "20", "--dtype",
                         "float32", "--batch-size", "8", "--data-dir", str(fixture_data), "--results-dir",
                         str(tmp_path / "results"), "--name", "ours")
    assert code == 0, err
    task_dir = tmp_path / "results" / "runs" / "ours" / "arc_easy"
    metrics = json.loads((task_dir / "metrics.json").read_text())
    rows = [json.loads(line) for line in (task_dir / "predictions.jsonl").open()]
    assert metrics["n"] == 20 and len(theirs) == 20
    assert metrics["mean"] == pytest.approx(results["acc,none"])
    assert metrics["others"]["acc_norm"]["mean"] == pytest.approx(results["acc_norm,none"])
    assert {r["id"]: r["answer"] for r in rows} == theirs
    for r in rows:  # our engine's log-likelihoods are the hf backend's: within 1e-5, or float32's own rounding of
        # sums near -200 (the tiny random model's; 1e-6 relative is a few ulps there)
        assert r["loglikelihoods"] == pytest.approx(their_loglikelihoods[r["id"]], abs=1e-5, rel=1e-6)
    assert all(len(r["loglikelihoods"]) == len(r["requests"]) == 4 and r["score"] in (0.0, 1.0) for r in rows)


def test_knowledge_run_records_a_hub_only_task_as_skipped(capsys, tiny_model_dir, fixture_data, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = ("eval", str(tiny_model_dir), "--tasks", "arc_challenge,hellaswag", "--dtype", "float32",
            "--data-dir", str(fixture_data), "--results-dir", str(tmp_path), "--name", "k")
    code, out, err = bench(capsys, *args)
    assert code == 0, err
    run = tmp_path / "runs" / "k"
    skipped = json.loads((run / "hellaswag" / "metrics.json").read_text())
    assert skipped["n"] == 0 and "offline" in skipped["skipped"] and "skipped" in out
    assert json.loads((run / "arc_challenge" / "metrics.json").read_text())["n"] == 3
    assert json.loads((run / "run.json").read_text())["complete"]
    cache = list((tmp_path / "cache" / "lm_eval").glob("*.db"))
    assert cache, "lm-eval's request cache is where a killed run resumes from"

    from bench.execution import runner

    record = (run / "run.json").read_bytes()
    monkeypatch.setattr(runner, "evaluate_harness_task",
                        lambda *a, **k: pytest.fail("a finished run was recomputed"))
    code, _, err = bench(capsys, *args)  # a finished run is reused: nothing runs, nothing is rewritten
    assert code == 0, err
    assert (run / "run.json").read_bytes() == record


def test_knowledge_bad_input_is_one_line(capsys, tiny_model_dir, fixture_data, tmp_path):
    data = tmp_path / "data" / "winogrande"
    data.mkdir(parents=True)
    (data / "validation.jsonl").write_text('{"sentence": "A _ b", "option1": "x", "answer": "1"}\n')
    code, _, err = bench(capsys, "eval", str(tiny_model_dir), "--tasks", "winogrande", "--data-dir",
                         str(tmp_path / "data"), "--results-dir", str(tmp_path / "results"))
    assert code == 2 and err.strip().count("\n") == 0
    assert f"{data / 'validation.jsonl'}:1: missing field 'option2'" in err
    assert not (tmp_path / "results" / "runs").exists() or not any((tmp_path / "results" / "runs").rglob("run.json"))


def test_adapter_reaches_lm_eval(capsys, tiny_model_dir, other_tiny_model_dir, fixture_data, tmp_path):
    from conftest import make_adapter

    adapter = make_adapter(tiny_model_dir, tmp_path / "adapter")
    base = ("eval", str(tiny_model_dir), "--tasks", "arc_challenge", "--dtype", "float32", "--data-dir",
            str(fixture_data), "--results-dir", str(tmp_path / "results"))
    assert bench(capsys, *base, "--name", "base")[0] == 0
    assert bench(capsys, *base, "--name", "tuned", "--adapter", str(adapter))[0] == 0
    rows = {name: [json.loads(line)["loglikelihoods"] for line in
                   (tmp_path / "results" / "runs" / name / "arc_challenge" / "predictions.jsonl").open()]
            for name in ("base", "tuned")}
    assert rows["base"] != rows["tuned"]
    code, _, err = bench(capsys, "eval", str(other_tiny_model_dir), "--tasks", "arc_challenge", "--adapter",
                         str(adapter), "--data-dir", str(fixture_data), "--results-dir", str(tmp_path / "results"))
    last = err.strip().splitlines()[-1]  # above it, only transformers' loading bar
    assert code == 2 and last.startswith("bench: error: --adapter") and "does not fit" in last


def test_rerun_computes_only_the_requests_not_cached(capsys, tiny_model_dir, fixture_data, tmp_path, monkeypatch):
    """What a killed run re-run relies on: lm-eval's request cache, filled request by request."""
    from bench.evaluation import lmeval

    seen: list[int] = []
    original = lmeval.loglikelihoods
    monkeypatch.setattr(lmeval, "loglikelihoods", lambda engine, pairs, max_length: seen.append(len(pairs))
                        or original(engine, pairs, max_length))
    base = ("eval", str(tiny_model_dir), "--tasks", "arc_easy", "--dtype", "float32", "--data-dir", str(fixture_data),
            "--results-dir", str(tmp_path))
    assert bench(capsys, *base, "--limit", "10", "--name", "first")[0] == 0
    assert bench(capsys, *base, "--name", "all")[0] == 0
    assert seen == [40, 40]  # 10 questions x 4 choices, then only the 10 new ones
    first, full = ([json.loads(line) for line in (tmp_path / "runs" / name / "arc_easy" / "predictions.jsonl").open()]
                   for name in ("first", "all"))
    assert first == full[:10]


@pytest.mark.parametrize("architecture", ["llama", "qwen2"])
def test_engine_log_likelihoods_are_a_plain_forwards(tmp_path, architecture, monkeypatch):
    """Per (context, continuation): the sum of log-softmax at the continuation's tokens of transformers' own forward
    over context + continuation, and whether each is the argmax; contexts shared by several continuations and
    contexts cut from the left at the model's maximum length, as lm-eval's hf backend cuts them; all requests in
    one packed pass, a pass per group with the LM head a few rows at a time, or the other architectures' path."""
    import torch

    import bench.generation.engine as engine_module

    from bench.evaluation.lmeval import loglikelihoods
    from bench.generation.engine import Engine
    from bench.generation.models import load_model
    from conftest import build_tiny_model

    model = load_model(str(build_tiny_model(tmp_path / "m", architecture=architecture)), dtype="float32")
    engine = Engine(model)
    g = torch.Generator().manual_seed(0)
    tokens = lambda n: torch.randint(3, 300, (n,), generator=g).tolist()
    shared = tokens(30)
    pairs = [(shared, tokens(4)), (tokens(12), tokens(1)), (shared, tokens(1)), (shared, tokens(7)), (tokens(50), tokens(3))]

    def plain(context, continuation, max_length):
        ids = (context + continuation)[-(max_length + 1):][:-1]
        with torch.inference_mode():
            logp = torch.log_softmax(model.model(torch.tensor([ids])).logits[0, -len(continuation):].float(), -1)
        target = torch.tensor(continuation)
        return float(logp.gather(1, target[:, None]).sum()), bool((logp.argmax(-1) == target).all())

    cases = [(2048, 8192, 512, True), (40, 8192, 512, True), (2048, 30, 2, True), (40, 30, 2, True),
             (40, 8192, 512, False)]  # (max_length, MAX_PREFILL_TOKENS, HEAD_ROWS, packed)
    for max_length, pass_tokens, head_rows, packed in cases:
        monkeypatch.setattr(engine_module, "MAX_PREFILL_TOKENS", pass_tokens)
        monkeypatch.setattr(engine_module, "HEAD_ROWS", head_rows)
        engine.packed = packed
        ours = loglikelihoods(engine, pairs, max_length)
        expected = [plain(c, k, max_length) for c, k in pairs]
        assert [greedy for _, greedy in ours] == [greedy for _, greedy in expected]
        assert [ll for ll, _ in ours] == pytest.approx([ll for ll, _ in expected], abs=1e-5, rel=1e-6)
