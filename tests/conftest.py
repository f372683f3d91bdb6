"""Shared fixtures: a tiny randomly initialised chat model (built from a config, no download) and tiny data."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.data import default_data_dir

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # TRL is imported only to compare with it
ROOT = Path(__file__).resolve().parents[1]  # the checkout
FIXTURES = ROOT / "tests" / "fixtures"
FIXTURE_DATA = FIXTURES / "data"
SHARED = ROOT.parent / "shared"  # the docs and the data mirror beside the checkout, as in CI
MIRROR = default_data_dir()  # $BENCH_DATA_DIR, else ../shared/data; None where there is no mirror


def first_mirror_record(dataset: str) -> dict:
    """The first record of a mirror file (`dataset/split.jsonl`); skips the test where there is no mirror."""
    import json

    if MIRROR is None or not (MIRROR / dataset).is_file():
        pytest.skip(f"no {dataset} in the data mirror (../shared/data or $BENCH_DATA_DIR)")
    with open(MIRROR / dataset, encoding="utf-8") as f:
        return json.loads(f.readline())


CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] }}"
    "{% if not (loop.last and message['role'] == 'assistant') %}{{ '<|im_end|>\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_tokenizer():
    """A byte-level BPE tokenizer trained in a blink on the fixture data, with a ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [p.read_text() for p in sorted(FIXTURE_DATA.rglob("*.jsonl"))]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|im_end|>",
                                   bos_token="<|im_start|>", chat_template=CHAT_TEMPLATE)


def build_tiny_model(directory: Path, seed: int = 0, hidden_size: int = 32, architecture: str = "llama") -> Path:
    """A 2-layer chat model of random weights: Llama (the embedded model's family) or Qwen2 (the shipped Qwen2.5
    models': biases on q, k and v)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    tokenizer = build_tokenizer()
    config_class, model_class = {"llama": (LlamaConfig, LlamaForCausalLM),
                                 "qwen2": (Qwen2Config, Qwen2ForCausalLM)}[architecture]
    config = config_class(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                          max_position_embeddings=2048, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id)
    torch.manual_seed(seed)
    model = model_class(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def train_in_subprocess(args: list[str]):
    """`python -m bench.cli ARGS` from the checkout, in its own process (one that can be killed)."""
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-m", "bench.cli", *args], cwd=ROOT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def sigkill_after_step(proc, checkpoint: Path, step: int) -> None:
    """SIGKILL the training once train_log.csv shows `step`; fails if it finished first."""
    import signal
    import time

    log, deadline = checkpoint / "train_log.csv", time.monotonic() + 120
    while not (log.is_file() and len(log.read_text().splitlines()) > step) and proc.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the training finished before it could be killed; make it longer"
    assert not (checkpoint / "train.json").exists()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def other_tiny_model_dir(tmp_path_factory) -> Path:
    """Same tokenizer, other shapes: an adapter trained for one must not load into the other."""
    return build_tiny_model(tmp_path_factory.mktemp("other-tiny-model"), seed=1, hidden_size=48)


@pytest.fixture
def fixture_data() -> Path:
    return FIXTURE_DATA


def make_adapter(model_dir, out_dir, seed=0):
    """A random (not zero-initialised) LoRA adapter on q_proj and v_proj: an adapted model that differs."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                   init_lora_weights=False))
    peft_model.save_pretrained(out_dir)
    return out_dir


def write_run(results_dir, name: str, tasks: dict[str, list[tuple[str, float]]]) -> None:
    """A complete run as `bench eval` leaves it, with the given per-example scores."""
    import numpy as np

    from bench.analysis.stats import bootstrap_ci
    from bench.store import RunStore

    store = RunStore(results_dir, name)
    identity = {"tasks": {task: {"n": len(rows)} for task, rows in tasks.items()}}
    store.begin({"identity": identity})
    for task, rows in tasks.items():
        scores = [s for _, s in rows]
        low, high = bootstrap_ci(scores)
        store.write_task(task, [{"id": i, "score": s} for i, s in rows],
                         {"task": task, "capability": "math", "metric": "accuracy", "mean": float(np.mean(scores)),
                          "ci_low": low, "ci_high": high, "n": len(rows)})
    store.finish({"identity": identity})
