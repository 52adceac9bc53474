"""The daemon's orjson-backed JSON must give the standard library's answers (values and errors)."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bgd import fastjson

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=20)


@given(json_values)
@settings(max_examples=300)
def test_round_trip_matches_the_standard_library(value):
    encoded = fastjson.dumps(value)
    assert json.loads(encoded) == json.loads(json.dumps(value))
    assert fastjson.loads(encoded) == json.loads(encoded)
    assert fastjson.dumps_line(value) == encoded + b"\n"


def test_values_orjson_would_change_or_refuse_go_to_the_standard_library():
    big = 10 ** 30
    assert fastjson.dumps(big) == b"1" + b"0" * 30            # past 64 bits
    assert fastjson.loads(b"[" + str(big).encode() + b"]") == [big]  # not silently a float
    assert fastjson.dumps({1: "a", "b": 2}) == b'{"1":"a","b":2}'  # non-string keys
    assert fastjson.loads(b"NaN") != fastjson.loads(b"NaN")   # json accepts it; orjson does not
    assert fastjson.dumps("é\u2028") == '"é\u2028"'.encode()    # UTF-8, no ASCII escaping


@pytest.mark.parametrize("bad", [b"{", b"[1,]", b"", b"\xff"])
def test_errors_are_the_standard_librarys(bad):
    with pytest.raises(ValueError) as ours:
        fastjson.loads(bad)
    with pytest.raises(ValueError) as theirs:
        json.loads(bad)
    assert type(ours.value) is type(theirs.value)


@pytest.mark.parametrize("number", [-9223372036854775809, -9223372036854775808, 18446744073709551615,
                                    18446744073709551616, 10 ** 30])
def test_integers_at_the_64_bit_edges_stay_exact(number):
    assert fastjson.loads(str(number).encode()) == number
    assert fastjson.loads(bytearray(str(number).encode())) == number
    assert fastjson.loads(b'{"n": [' + str(number).encode() + b']}') == {"n": [number]}
    assert type(fastjson.loads(str(number))) is int
    assert fastjson.dumps(number) == str(number).encode()


def test_a_str_is_checked_for_long_digit_runs_like_bytes():
    # Store rows come back as str: a big integer in one stays exact, digits of other scripts inside a
    # string are only text, and a lone surrogate is json's to decide.
    big = 10 ** 25
    record = '{"results": [' + ",".join(f'{{"routine": "r-{i:03d}", "reason": "repository is x"}}' for i in range(50))
    assert fastjson.loads(record + f'], "n": {big}}}') == json.loads(record + f'], "n": {big}}}')
    assert type(fastjson.loads(record + f'], "n": {big}}}')["n"]) is int
    arabic = '["' + "\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668\u0669\u0660" * 2 + '"]'
    assert fastjson.loads(arabic) == json.loads(arabic)
    assert fastjson.loads('"\ud800"') == json.loads('"\ud800"')
    assert fastjson.loads('"\\ud800"') == json.loads('"\\ud800"')
