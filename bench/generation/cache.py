"""The cache: one SQLite file. One row per generation, keyed by (model fingerprint, prompt, generation
settings), one per sandbox execution, keyed by (program, sandbox settings), and one per judge completion, keyed by
(judge, judging prompt, completion settings).

SQLite in WAL mode commits each batch atomically, so a process killed at any moment (even `kill -9`) leaves
every finished batch readable and no half-written row; a re-run generates (and executes) only what is missing.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path


JSON_TABLES = ("executions", "judgments")  # rows of JSON: sandbox outcomes, judge completions


@dataclass(frozen=True)
class CachedGeneration:
    text: str
    n_tokens: int
    finish: str  # "eos", "stop" or "length"


def cache_key(fingerprint: str, prompt: str, settings: dict) -> str:
    blob = json.dumps([fingerprint, prompt, settings], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


class Cache:
    """`len()` counts generations."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, timeout=60)
        for attempt in itertools.count():  # SQLite answers "locked" at once, without waiting, to a journal mode
            try:                           # change while another process (a rank of the same job) opens the file
                self._db.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or attempt >= 600:
                    raise
                time.sleep(0.1)
        self._db.execute("CREATE TABLE IF NOT EXISTS generations (key TEXT PRIMARY KEY, text TEXT NOT NULL, "
                         "n_tokens INTEGER NOT NULL, finish TEXT NOT NULL)")
        for table in JSON_TABLES:
            self._db.execute(f"CREATE TABLE IF NOT EXISTS {table} (key TEXT PRIMARY KEY, outcome TEXT NOT NULL)")
        self._db.commit()

    def get_many(self, keys: list[str]) -> dict[str, CachedGeneration]:
        found: dict[str, CachedGeneration] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            rows = self._db.execute(f"SELECT key, text, n_tokens, finish FROM generations WHERE key IN "
                                    f"({','.join('?' * len(chunk))})", chunk)
            found.update({key: CachedGeneration(text, n, finish) for key, text, n, finish in rows})
        return found

    def put_many(self, items: dict[str, CachedGeneration]) -> None:
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO generations VALUES (?, ?, ?, ?)",
                                 [(k, g.text, g.n_tokens, g.finish) for k, g in items.items()])

    def get_outcomes(self, keys: list[str]) -> dict[str, dict]:
        return self._get_json("executions", keys)

    def put_outcomes(self, items: dict[str, dict]) -> None:
        self._put_json("executions", items)

    def get_judgments(self, keys: list[str]) -> dict[str, dict]:
        return self._get_json("judgments", keys)

    def put_judgments(self, items: dict[str, dict]) -> None:
        self._put_json("judgments", items)

    def _get_json(self, table: str, keys: list[str]) -> dict[str, dict]:
        found: dict[str, dict] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            rows = self._db.execute(f"SELECT key, outcome FROM {table} WHERE key IN ({','.join('?' * len(chunk))})",
                                    chunk)
            found.update({key: json.loads(outcome) for key, outcome in rows})
        return found

    def _put_json(self, table: str, items: dict[str, dict]) -> None:
        with self._db:
            self._db.executemany(f"INSERT OR REPLACE INTO {table} VALUES (?, ?)",
                                 [(k, json.dumps(v)) for k, v in items.items()])

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM generations").fetchone()[0]

    def close(self) -> None:
        self._db.close()
