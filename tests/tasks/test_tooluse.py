from __future__ import annotations

import pytest

from bench.types import Example
from tasks.alpaca import ALPACA_SYSTEM
from tasks.tooluse import (
    exact_match,
    first_call,
    openfunction,
    openfunction_example,
    score_call,
    split_reference,
    standardize_call,
)

REF = 'flight.book(origin="Los Angeles", destination="New York", passengers=2, date="June 15th")'


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("  f(a='x',  b = 'y')\n", 'f(a="x",b = "y")'),
        ("f(a=1,\n\tb=2)", "f(a=1,b=2)"),
        ("f(a = 1 , b=2)", "f(a = 1 ,b=2)"),  # only ", " collapses, not " ,"
    ],
)
def test_standardize_call(text: str, expected: str) -> None:
    assert standardize_call(text) == expected


@pytest.mark.parametrize(
    ("output", "correct"),
    [
        (REF, True),
        ("Sure! " + REF.replace('"', "'") + " is the call.", True),  # quotes normalised, anywhere in the output
        (REF.replace(", ", ",\n    "), True),  # newline + indentation collapse to one space, then ", " -> ","
        (REF.replace(", ", " , "), False),  # " , " is not normalised
        ('flight.book(destination="New York", origin="Los Angeles", passengers=2, date="June 15th")', False),
        ("my" + REF, False),  # \b: the name must start at a word boundary
        ("x." + REF, True),  # "." is a word boundary, as in the study's regex
        (REF.replace("passengers=2", "passengers='2'"), False),
        (REF[:-1], False),
        ("", False),
    ],
)
def test_exact_match_is_the_study_rule(output: str, correct: bool) -> None:
    assert exact_match(output, REF) is correct


def test_split_reference_takes_the_last_parenthesis() -> None:
    assert split_reference("a.b(x=f(1), y=2) trailing)") == ("a.b", "x=f(1),y=2) trailing")
    with pytest.raises(ValueError):
        split_reference("not a call")


@pytest.mark.parametrize(
    ("output", "ast_ok"),
    [
        (REF, True),
        ('flight.book(destination="New York", origin="Los Angeles", passengers=2, date="June 15th")', True),
        ("flight.book(origin='Los Angeles',destination='New York',passengers=2,date='June 15th')", True),
        ("Call: flight.book( origin = 'Los Angeles' , destination='New York', passengers=2, date='June 15th' ).",
         True),
        (REF.replace("passengers=2", "passengers='2'"), False),  # a literal's type matters
        (REF.replace(', date="June 15th"', ""), False),  # a missing argument
        ("hotel.book(x=1) then " + REF, False),  # the first call is the one judged
        ("flight.book(origin=", False),
        ("no call at all", False),
    ],
)
def test_ast_score(output: str, ast_ok: bool) -> None:
    example = Example("openfunction-0", "q", REF)
    assert score_call(output, example).others["ast"] == float(ast_ok)


def test_ast_score_tells_booleans_from_numbers_and_reads_brackets_inside_strings() -> None:
    flag = Example("openfunction-0", "q", 'weather.get(city="Paris", detailed=True, days=[True])')
    assert score_call('weather.get(city="Paris", detailed=True, days=[True])', flag).others["ast"] == 1.0
    assert score_call('weather.get(city="Paris", detailed=1, days=[True])', flag).others["ast"] == 0.0
    assert score_call('weather.get(city="Paris", detailed=True, days=[1])', flag).others["ast"] == 0.0
    smile = Example("openfunction-0", "q", 'search.query(q="smile :)", limit=5)')
    assert score_call('Use search.query(q="smile :)", limit=5).', smile).others["ast"] == 1.0


def test_first_call_skips_unparseable_and_keeps_non_literals() -> None:
    assert first_call("print(x y) then f(a=g(1))") == ("f", {"a": ("source", "g(1)")})
    assert first_call("obj.method(1, k=[1, 2])") == ("obj.method", {"0": ("literal", 1), "k": ("literal", [1, 2])})


def test_score_headline_is_exact() -> None:
    example = Example("openfunction-0", "q", REF)
    reordered = 'flight.book(destination="New York", origin="Los Angeles", passengers=2, date="June 15th")'
    score = score_call(reordered, example)
    assert (score.value, score.others["ast"], score.answer) == (0.0, 1.0, "flight.book")


def test_malformed_reference_is_rejected() -> None:
    with pytest.raises(ValueError, match="not a function call"):
        openfunction_example({"instruction": "q", "output": "book a flight"}, 0)


def test_prompt_is_alpaca() -> None:
    example = openfunction_example({"instruction": "Do it.", "output": REF}, 3)
    assert example.id == "openfunction-3"
    assert openfunction.to_prompt(example)[0] == {"role": "system", "content": ALPACA_SYSTEM}
    assert openfunction.metric == "exact"
