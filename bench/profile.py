"""A study profile: which seed, which training task and methods, which suites and how many examples.
Profiles are data (profiles/NAME.toml), read here; an unknown key or a wrong type is an error naming it."""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from bench.models import PROMPT_FORMATS
from bench.types import BenchError

PROFILES_DIR = Path(__file__).resolve().parents[1] / "profiles"


@dataclass(frozen=True)
class Profile:
    name: str
    model: str
    train_task: str
    suites: list[str] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)  # tasks beyond the suites' (suites and tasks as in `bench eval`)
    dtype: str = "auto"
    prompt_format: str = "chat"  # or "study": the sdft repository's plain-text Alpaca template (bench eval --help)
    methods: list[str] = field(default_factory=lambda: ["sft", "sdft"])
    train_limit: int | None = None
    limit: int | None = None
    task_limits: dict[str, int] = field(default_factory=dict)
    batch_size: int = 64
    sft: dict[str, Any] = field(default_factory=dict)  # SFTConfig keys (checked by the trainer's config reader)


def load_profile(spec: str) -> Profile:
    """`tiny`, `paper` (profiles/NAME.toml) or a path to a TOML file."""
    path = Path(spec) if spec.endswith(".toml") else PROFILES_DIR / f"{spec}.toml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PROFILES_DIR.glob("*.toml")))
        raise BenchError(f"--profile {spec}: no such profile ({known}, or a .toml file)")
    try:
        values = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise BenchError(f"{path}: not valid TOML ({e})") from None
    types = {f.name: f.type for f in fields(Profile) if f.name != "name"}
    for key, value in values.items():
        if key not in types:
            raise BenchError(f"{path}: unknown key {key!r} (keys: {', '.join(types)})")
        expected = {"str": str, "int | None": int, "int": int, "list[str]": list, "dict[str, int]": dict,
                    "dict[str, Any]": dict}[types[key]]
        if not isinstance(value, expected) or isinstance(value, bool):
            raise BenchError(f"{path}: key {key!r} must be {types[key]}, got {type(value).__name__}")
    for key in ("model", "train_task"):
        if key not in values:
            raise BenchError(f"{path}: missing key {key!r}")
    if values.get("prompt_format", "chat") not in PROMPT_FORMATS:
        raise BenchError(f"{path}: key 'prompt_format' must be one of {', '.join(PROMPT_FORMATS)}")
    if not values.get("suites") and not values.get("tasks"):
        raise BenchError(f"{path}: name the evaluation in 'suites' or 'tasks'")
    return Profile(name=path.stem, **values)
