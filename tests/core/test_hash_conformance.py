"""Every case of TinyBase 10.0.1's hash.json and value_hash.json through the public helpers.

The expected numbers were produced by TinyBase itself (see tests/conformance/README.md), so a
pass here means a Python replica and a JavaScript replica agree on every hash they compare.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from localsync import (
    UNDEFINED,
    add_or_remove_hash,
    get_cell_hash,
    get_cell_in_row_hash,
    get_hash,
    get_row_hash,
    get_row_in_table_hash,
    get_table_hash,
    get_table_in_tables_hash,
    get_tables_hash,
    get_value_hash,
    get_value_in_values_hash,
    get_values_hash,
)
from localsync.core.codec import js_stringify
from localsync.core.hash import to_utf8

VECTORS = Path(__file__).parents[1] / "conformance"
HASH_CASES: list[dict[str, Any]] = json.loads((VECTORS / "hash.json").read_text("utf-8"))
VALUE_HASH_CASES: list[dict[str, Any]] = json.loads(
    (VECTORS / "value_hash.json").read_text("utf-8")
)


def _label(text: str) -> str:
    shown = text if len(text) <= 24 else f"{text[:20]}...{len(text)}"
    return shown.encode("ascii", "backslashreplace").decode("ascii")


def _case_id(index: int, case: dict[str, Any]) -> str:
    function = case.get("function", "getHash")
    if "value_kind" in case:
        detail = case["value_kind"] if case["value_json"] is None else case["value_json"]
        return f"{index}-{function}-{_label(str(detail))}-{case['hlc'] or 'nohlc'}"
    if "id" in case:
        return f"{index}-{function}-{_label(case['id'])}-{case['hash']}"
    if "input" in case:
        return f"{index}-{_label(case['input'])}"
    return f"{index}-{function}"


@pytest.mark.parametrize("case", HASH_CASES, ids=[_case_id(i, c) for i, c in enumerate(HASH_CASES)])
def test_get_hash(case: dict[str, Any]) -> None:
    assert to_utf8(case["input"]).hex() == case["utf8_hex"]
    assert get_hash(case["input"]) == case["hash"]


def _value_of(case: dict[str, Any]) -> Any:
    kind = case["value_kind"]
    if kind == "json":
        # json.loads keeps key order; js_stringify applies JavaScript's own-key order.
        return json.loads(case["value_json"])
    return {
        "undefined": UNDEFINED,
        "-0": -0.0,
        "NaN": math.nan,
        "Infinity": math.inf,
        "-Infinity": -math.inf,
    }[kind]


ALIASES = {
    "getValueInValuesHash": get_value_in_values_hash,
    "getCellInRowHash": get_cell_in_row_hash,
    "getRowInTableHash": get_row_in_table_hash,
    "getTableInTablesHash": get_table_in_tables_hash,
    "getValuesHash": get_values_hash,
    "getRowHash": get_row_hash,
    "getTableHash": get_table_hash,
    "getTablesHash": get_tables_hash,
    "getValueHash": get_value_hash,
    "getCellHash": get_cell_hash,
}


@pytest.mark.parametrize(
    "case", VALUE_HASH_CASES, ids=[_case_id(i, c) for i, c in enumerate(VALUE_HASH_CASES)]
)
def test_value_hash_vector(case: dict[str, Any]) -> None:
    function = case["function"]
    if function in ("getValueHash", "getCellHash"):
        value = _value_of(case)
        assert get_hash(case["hashed_string"]) == case["expected"]
        assert ALIASES[function](value, case["hlc"]) == case["expected"]
        if case["value_kind"] == "json":
            assert js_stringify(value) + ":" + case["hlc"] == case["hashed_string"]
    elif function in (
        "getValueInValuesHash",
        "getCellInRowHash",
        "getRowInTableHash",
        "getTableInTablesHash",
    ):
        assert case["hashed_string"] == f"{case['id']}:{case['hash']}"
        assert ALIASES[function](case["id"], case["hash"]) == case["expected"]
    elif function == "addOrRemoveHash":
        assert add_or_remove_hash(case["hash1"], case["hash2"]) == case["expected"]
    elif function in ("getValuesHash", "getRowHash", "getTableHash", "getTablesHash"):
        assert ALIASES[function](case["hashes"]) == case["expected"]
    elif function == "worked_example":
        cells = case["cells"]
        cell_hashes = {cell_id: get_cell_hash(cell, hlc) for cell_id, (cell, hlc) in cells.items()}
        assert cell_hashes == case["cell_hashes"]
        row_hash = get_row_hash(cell_hashes)
        assert row_hash == case["row_hash"]
        table_hash = get_table_hash({case["row_id"]: row_hash})
        assert table_hash == case["table_hash"]
        assert get_tables_hash({case["table_id"]: table_hash}) == case["tables_hash"]
    else:  # pragma: no cover - a new vector kind must not pass silently
        pytest.fail(f"unknown vector function {function}")


def test_every_common_export_is_covered() -> None:
    """The vectors exercise each alias TinyBase's common module exports."""
    functions = {case["function"] for case in VALUE_HASH_CASES}
    assert set(ALIASES) <= functions


def test_hash_of_surrogate_pair_code_points_equals_astral_character() -> None:
    """A Python str holding a high+low surrogate pair is one astral character in JavaScript."""
    pair = "\ud83d\ude00"  # two code points, as e.g. a surrogatepass decode produces
    assert len(pair) == 2
    assert get_hash(pair) == get_hash("😀")
    assert get_value_hash(pair, "") == get_value_hash("😀", "")
    # reversed order is two lone surrogates: each becomes U+FFFD
    assert get_hash(pair[::-1]) == get_hash("\ufffd\ufffd")


def test_cell_hash_of_int_beyond_2_53_matches_the_double_javascript_sees() -> None:
    # a JavaScript peer receives 2**53 + 1 as the double 2**53
    assert get_cell_hash(2**53 + 1, "x") == get_cell_hash(float(2**53), "x")
    assert get_cell_hash(2**53 + 1, "x") == get_hash("9007199254740992:x")


# --------------------------------------------------------------------------- against TinyBase

_TINYBASE_HASH_SCRIPT = r"""
import {getHash, getValueHash, getValuesHash, getTableHash} from 'tinybase';
import {readFileSync} from 'node:fs';
const {strings, values, maps} = JSON.parse(readFileSync(0, 'utf8'));
console.log(JSON.stringify({
  strings: strings.map((s) => getHash(s)),
  values: values.map(([text, hlc]) => getValueHash(JSON.parse(text), hlc)),
  maps: maps.map((m) => [getValuesHash(m), getTableHash(m)]),
}));
"""


def _random_text(rng: Any, max_size: int = 12) -> str:
    pools = [
        'abcxyz019 :"\\/',
        "\x00\x01\x08\t\n\x0c\r\x1f\x7f",
        "é中ß\u2028\u2029\ufeff\uffff",
        "😀𝄞",
        "\ud800\udbff\udc00\udfff",  # surrogates: lone, or paired by chance
    ]
    return "".join(rng.choice(rng.choice(pools)) for _ in range(rng.randrange(max_size + 1)))


def _random_json(rng: Any, depth: int = 0) -> Any:
    roll = rng.random()
    if depth < 3 and roll < 0.15:
        return [_random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    if depth < 3 and roll < 0.3:
        keys = [_random_text(rng, 4) for _ in range(rng.randrange(4))]
        keys += [str(rng.randrange(12)), rng.choice(["01", "-1", "4294967294", "4294967295"])]
        return {key: _random_json(rng, depth + 1) for key in keys}
    return rng.choice(
        [
            None,
            True,
            False,
            rng.randrange(-(2**60), 2**60),
            rng.randrange(-1000, 1000),
            rng.uniform(-1e6, 1e6),
            rng.random() * 10 ** rng.randrange(-30, 30),
            _random_text(rng),
        ]
    )


@pytest.mark.interop
@pytest.mark.timeout(300)
def test_random_strings_and_values_hash_like_tinybase(tmp_path: Path) -> None:
    """Random text (control chars, astral, lone surrogates) and JSON values vs TinyBase."""
    import random

    from tests import npm_env

    npm_env.require_node()
    rng = random.Random(11)
    strings = [_random_text(rng, 40) for _ in range(2000)]
    values = [(_random_json(rng), rng.choice(["", "NjEtLV-----7JQY8"])) for _ in range(2000)]
    maps = [
        {_random_text(rng, 5): rng.randrange(2**32) for _ in range(rng.randrange(5))}
        for _ in range(300)
    ]
    request = {
        # ensure_ascii escapes lone surrogates; JSON.parse restores them as lone code units
        "strings": strings,
        "values": [[json.dumps(value), hlc] for value, hlc in values],
        "maps": maps,
    }
    script = tmp_path / "localsync_hash_oracle.mjs"
    script.write_text(_TINYBASE_HASH_SCRIPT)
    expected = npm_env.run_node_json(script, stdin=json.dumps(request), timeout=120)
    assert [get_hash(s) for s in strings] == expected["strings"]
    assert [get_value_hash(value, hlc) for value, hlc in values] == expected["values"]
    assert [[get_values_hash(m), get_table_hash(m)] for m in maps] == expected["maps"]
