from __future__ import annotations

import json

import pytest

from bench.store import RunStore, atomic_write_text
from bench.types import BenchError


def test_atomic_write_leaves_whole_file_only(tmp_path):
    target = tmp_path / "a" / "file.json"
    atomic_write_text(target, "x" * 1000)
    assert target.read_text() == "x" * 1000
    assert [p.name for p in target.parent.iterdir()] == ["file.json"]


def test_complete_run_is_immutable_and_identity_checked(tmp_path):
    store = RunStore(tmp_path, "seed")
    identity = {"model": "m", "limit": 3}
    assert not store.finished_with(identity)
    store.begin({"identity": identity})
    assert json.loads((store.dir / "run.json").read_text())["complete"] is False
    assert not store.finished_with(identity), "an incomplete run is resumed, not reused"
    store.finish({"identity": identity})
    assert store.finished_with(identity)
    with pytest.raises(BenchError, match="limit differ"):
        store.finished_with({"model": "m", "limit": 4})
    with pytest.raises(BenchError, match="immutable"):
        store.begin({"identity": identity})


@pytest.mark.parametrize("name", ["", "a/b", ".hidden"])
def test_bad_run_names(tmp_path, name):
    with pytest.raises(BenchError, match="--name"):
        RunStore(tmp_path, name)
