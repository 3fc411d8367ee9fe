"""codec: JavaScript-exact numbers and JSON, checked against Node's own JSON.stringify.

Hashes of cells are FNV-1a over ``JSON.stringify(value)``, so every byte of our serialisation
must be what V8 prints. Rather than hard-coding guesses, the property tests send values to a
long-lived ``node`` process and compare. Only ``node`` is needed (no npm packages); the tests
skip only when node is absent.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import struct
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from localsync import JSON_PREFIX, UNDEFINED, get_unique_id
from localsync.core.codec import (
    ENCODE,
    decode_if_json,
    encode_if_json,
    encode_json_cell,
    is_encoded_json,
    js_number,
    js_stringify,
    only_hlc_chars,
)

# --------------------------------------------------------------------------- node oracle

_NODE_SCRIPT = r"""
const rl = require('readline').createInterface({input: process.stdin, terminal: false});
rl.on('line', (line) => {
  const request = JSON.parse(line);
  let result;
  if (request.kind === 'numbers') {
    const buffer = Buffer.from(request.hex, 'hex');
    result = [];
    for (let i = 0; i < buffer.length; i += 8) result.push(String(buffer.readDoubleBE(i)));
  } else {
    result = request.texts.map((text) => JSON.stringify(JSON.parse(text)));
  }
  process.stdout.write(JSON.stringify(result) + '\n');
});
"""


class Node:
    """One node process answering batches of requests over stdin/stdout lines."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            ["node", "-e", _NODE_SCRIPT],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            encoding="utf-8",
        )

    def ask(self, request: dict[str, Any]) -> list[str]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        assert line, "node exited"
        return json.loads(line)

    def numbers(self, values: list[float]) -> list[str]:
        hex_text = b"".join(struct.pack(">d", v) for v in values).hex()
        return self.ask({"kind": "numbers", "hex": hex_text})

    def stringify(self, values: list[Any]) -> list[str]:
        # ensure_ascii escapes lone surrogates, which JSON.parse turns back into lone ones
        return self.ask({"kind": "stringify", "texts": [json.dumps(v) for v in values]})

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    oracle = Node()
    yield oracle
    oracle.close()


# --------------------------------------------------------------------------- numbers

SPECIAL_NUMBERS = [
    0.0,
    -0.0,
    1.0,
    -1.0,
    0.1,
    0.30000000000000004,
    1e21,
    1e20,
    999999999999999900000.0,
    1e-6,
    1e-7,
    1.5e-7,
    0.000001234,
    123456789012345680000.0,
    2.0**53,
    2.0**53 + 2,
    1e16,
    1.7976931348623157e308,
    5e-324,
    2.2250738585072014e-308,
    -2.5e-8,
    1e100,
    123e-20,
    4294967295.0,
    0.5,
    100.0,
]


@pytest.mark.timeout(120)
def test_js_number_special_values_match_node(node: Node) -> None:
    assert [js_number(v) for v in SPECIAL_NUMBERS] == node.numbers(SPECIAL_NUMBERS)


@pytest.mark.timeout(120)
def test_js_number_random_bit_patterns_match_node(node: Node) -> None:
    """Doubles from random bit patterns cover every exponent, not just 'nice' numbers."""
    import random

    rng = random.Random(20240601)
    values = []
    while len(values) < 4000:
        (v,) = struct.unpack(">d", rng.getrandbits(64).to_bytes(8, "big"))
        if math.isfinite(v):
            values.append(v)
    # and integers of every size, which JavaScript prints without exponent below 1e21
    values += [float(rng.randrange(10 ** rng.randrange(1, 25))) for _ in range(1000)]
    assert [js_number(v) for v in values] == node.numbers(values)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1, max_size=50))
@pytest.mark.timeout(120)
def test_js_number_floats_match_node_and_round_trip(node: Node, values: list[float]) -> None:
    texts = [js_number(v) for v in values]
    assert texts == node.numbers(values)
    for value, text in zip(values, texts, strict=True):
        assert float(text) == value


def test_js_number_non_finite_and_ints() -> None:
    assert js_number(math.inf) == "Infinity"
    assert js_number(-math.inf) == "-Infinity"
    assert js_number(math.nan) == "NaN"
    assert js_number(2**53) == "9007199254740992"
    # beyond 2**53 a JavaScript peer holds the nearest double
    assert js_number(2**53 + 1) == "9007199254740992"
    assert js_number(10**21) == "1e+21"
    assert js_number(10**400) == "Infinity"
    assert js_number(-(10**400)) == "-Infinity"
    with pytest.raises(TypeError):
        js_number(True)


# --------------------------------------------------------------------------- stringify

_ALL_CHARACTERS = st.characters(exclude_categories=())  # includes lone surrogates
_TEXT = st.text(_ALL_CHARACTERS, max_size=12) | st.sampled_from(
    ["", "\u2028\u2029", "\x7f", "\x00\x08\x0c\x1f", '"\\/', "\ud800", "\udfff\ud800", "é中😀"]
)
_KEYS = (
    _TEXT
    | st.integers(min_value=0, max_value=2**32 + 3).map(str)
    | st.sampled_from(["01", "-1", "-0", "1.0", " 1", "4294967294", "4294967295", "__proto__"])
)
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _TEXT
)
_JSON = st.recursive(
    _SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_KEYS, children, max_size=5),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_JSON, min_size=1, max_size=20))
@example([{"b": 1, "2": 0, "1": 0}, {"10": 1, "9": 2, "x": 3, "01": 4, "4294967295": 5}])
@example(["\ud83d\ude00", "\ude00\ud83d", "a\ud800b"])
@pytest.mark.timeout(120)
def test_js_stringify_matches_node(node: Node, values: list[Any]) -> None:
    assert [js_stringify(v) for v in values] == node.stringify(values)


def test_js_stringify_known_forms() -> None:
    # from tests/conformance/value_hash.json (TinyBase's own hashed strings)
    assert js_stringify({"b": 1, "2": 0, "1": 0}) == '{"1":0,"2":0,"b":1}'
    assert js_stringify([1, "two", None, True]) == '[1,"two",null,true]'
    assert js_stringify("\x00ctl\x1f") == '"\\u0000ctl\\u001f"'
    assert js_stringify("\u2028") == '"\u2028"'
    assert js_stringify("\ud800") == '"\\ud800"'
    assert js_stringify(-0.0) == "0"
    assert js_stringify(math.nan) == "null"
    assert js_stringify([math.inf, -math.inf]) == "[null,null]"
    assert js_stringify(10**400) == "null"
    assert js_stringify((1, 2)) == "[1,2]"


@pytest.mark.parametrize(
    "bad", [b"bytes", {1, 2}, object(), {1: "int key"}, [complex(1, 2)], {"a": {"b": b"x"}}]
)
def test_js_stringify_rejects_what_json_cannot_hold(bad: Any) -> None:
    with pytest.raises(TypeError):
        js_stringify(bad)


# --------------------------------------------------------------------------- cells and ids


def test_constants() -> None:
    assert UNDEFINED == "\ufffc"
    assert JSON_PREFIX == "\ufffd"


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(_KEYS, _JSON, max_size=5) | st.lists(_JSON, max_size=5),
)
def test_json_cell_round_trip(obj: dict[str, Any] | list[Any]) -> None:
    encoded = encode_json_cell(obj)
    assert encoded == encode_if_json(obj)
    assert is_encoded_json(encoded)
    assert encoded == JSON_PREFIX + js_stringify(obj)
    decoded = decode_if_json(encoded)
    # decoding gives the same JSON again (Python's json keeps surrogates and key order)
    assert js_stringify(decoded) == js_stringify(obj)


@pytest.mark.parametrize("value", ["plain", "", 1, 1.5, True, None, UNDEFINED])
def test_non_json_values_pass_through(value: Any) -> None:
    assert encode_if_json(value) == value
    assert decode_if_json(value) == value
    assert not is_encoded_json(value)


@pytest.mark.parametrize("text", ["{", "NaN", "[Infinity]", "{'a': 1}", ""])
def test_decode_rejects_invalid_json(text: str) -> None:
    with pytest.raises(ValueError):
        decode_if_json(JSON_PREFIX + text)


@pytest.mark.parametrize("length", [0, 1, 5, 16, 64])
def test_get_unique_id(length: int) -> None:
    ids = {get_unique_id(length) for _ in range(20)}
    assert all(len(i) == length and set(i) <= set(ENCODE) for i in ids)
    if length >= 5:
        assert len(ids) == 20
    assert len(get_unique_id()) == 16


def test_unique_ids_span_refills_and_threads() -> None:
    """Ids are cut from characters drawn a kilobyte ahead: none repeats across refills, from
    threads drawing at once, or for lengths beyond one draw."""
    from concurrent.futures import ThreadPoolExecutor

    def draw(n: int) -> list[str]:
        return [get_unique_id(16) for _ in range(n)]

    with ThreadPoolExecutor(8) as pool:
        ids = [i for chunk in pool.map(draw, [500] * 8) for i in chunk]
    assert len(set(ids)) == len(ids) == 4000
    long = get_unique_id(5000)
    assert len(long) == 5000 and set(long) <= set(ENCODE)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_draws_ids_of_its_own() -> None:
    """A child must not hand out the ids its parent drew ahead and has not used yet."""
    get_unique_id(16)  # (the parent now holds characters drawn ahead)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read)
        os.write(write, "".join(get_unique_id(16) for _ in range(20)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        child = pipe.read().decode()
    os.waitpid(pid, 0)
    parent = "".join(get_unique_id(16) for _ in range(20))
    assert len(child) == len(parent) == 320
    assert {child[i : i + 16] for i in range(0, 320, 16)}.isdisjoint(
        {parent[i : i + 16] for i in range(0, 320, 16)}
    )


_HLC_ALPHABET_RUN = re.compile(r"[-0-9A-Z_a-z]*")


@given(
    st.one_of(
        st.text(alphabet=ENCODE, max_size=64),
        st.text(alphabet=ENCODE + "+/.=:~ \x00\x7f\xe9\u00ff\u0100\ud7ff\U0001f600", max_size=64),
        st.text(max_size=40),
    )
)
@example("")
@example("-" * 16 + "\u00e9")
@example("abc\x00")
@example(ENCODE * 5)  # (longer texts take the translation instead of str.strip)
@example(ENCODE * 5 + "+")
@example("\u00e9" + ENCODE * 5)
def test_only_hlc_chars_is_the_alphabet_regex(text: str) -> None:
    """The received-message check (a byte translation, see its docstring) decides as the
    regular expression it replaced, non-ASCII and control characters included."""
    assert only_hlc_chars(text) == (_HLC_ALPHABET_RUN.fullmatch(text) is not None)
