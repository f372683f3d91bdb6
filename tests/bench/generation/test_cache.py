"""bench/generation/cache.py: every generation, outcome and judgment read back as written, past SQLite's chunk of 500
keys, across a reopen, and keys that differ in any part never collide."""
from __future__ import annotations

from pathlib import Path

from bench.generation.cache import Cache, CachedGeneration, cache_key


def test_more_keys_than_one_chunk_come_back_each_with_its_own_value(tmp_path):
    cache = Cache(tmp_path / "c.sqlite")
    generations = {cache_key("fp", f"prompt {i}", {"t": 0}): CachedGeneration(f"text {i}", i, "eos") for i in range(1234)}
    cache.put_many(generations)
    cache.put_outcomes({f"o{i}": {"status": "passed", "i": i} for i in range(1001)})
    cache.put_judgments({f"j{i}": {"p": i / 1000} for i in range(501)})
    cache.close()
    cache = Cache(tmp_path / "c.sqlite")  # a new process reads what the last one committed
    keys = list(generations) + ["missing"]
    assert cache.get_many(keys) == generations and len(cache) == 1234
    assert cache.get_outcomes([f"o{i}" for i in range(1002)]) == {f"o{i}": {"status": "passed", "i": i}
                                                                 for i in range(1001)}
    assert cache.get_judgments([f"j{i}" for i in range(501)])["j500"] == {"p": 0.5}


def test_a_key_is_the_fingerprint_the_prompt_and_every_setting():
    base = cache_key("fp", "prompt", {"max_new_tokens": 8, "temperature": 0.0})
    assert base == cache_key("fp", "prompt", {"temperature": 0.0, "max_new_tokens": 8})  # order of settings
    assert len({base, cache_key("fp2", "prompt", {"max_new_tokens": 8, "temperature": 0.0}),
                cache_key("fp", "prompt ", {"max_new_tokens": 8, "temperature": 0.0}),
                cache_key("fp", "prompt", {"max_new_tokens": 9, "temperature": 0.0})}) == 4


def _open_and_write(path: str, start, key: str) -> None:
    start.wait()
    cache = Cache(Path(path))
    cache.put_many({key: CachedGeneration(key, 1, "eos")})
    cache.close()


def test_processes_opening_a_new_cache_at_once_all_open_it(tmp_path):
    """The ranks of one job open the results directory's cache together: none may fail with "database is locked"
    (SQLite refuses a journal-mode change at once, without its busy wait, while another process holds the file)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    for trial in range(10):
        path, start = tmp_path / f"c{trial}" / "generations.sqlite", context.Event()
        workers = [context.Process(target=_open_and_write, args=(str(path), start, f"k{i}")) for i in range(8)]
        for w in workers:
            w.start()
        start.set()
        for w in workers:
            w.join(60)
        assert [w.exitcode for w in workers] == [0] * 8
        assert len(Cache(path)) == 8
