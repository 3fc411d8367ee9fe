"""One validation of received data: TinyBase's protocol message check and its store's.

TinyBase checks what a peer sends twice: the synchronizer checks every message's shape
(``isProtocolMessageValid``) and the store checks mergeable content or changes before it
merges them (``validateMergeable``: also stamps with hashes, values it can store and the
future limit of HLCs). Both questions start with the same walk of the stamps, written once
here (:func:`gather_changes`); the walk gathers what the store's check needs beyond the
shape (every HLC and the values to look at again), and :class:`Validator` finishes the
store's check from that, whether the walk was the sync engine's (a :class:`CheckedChanges`)
or its own.

Why gather instead of checking as it goes: peer data arrives in bulk (a joining replica
receives millions of cells), so the cell level is one tight loop, the HLCs' alphabet is
checked once over their concatenation and the future limit once, with the greatest HLC.
The verdict is the same as checking every stamp in turn.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Final

from localsync.core.checked_changes import CheckedChanges
from localsync.core.codec import (
    JSON_PREFIX,
    SAFE_FLOAT_LIMIT,
    SAFE_INT_LIMIT,
    UNDEFINED,
    only_hlc_chars,
)
from localsync.core.content import ABSENT, check_json, encode_accepted, fits_js_number
from localsync.core.hash import MAX_HASH
from localsync.core.hlc import Number, future_limit, is_hlc, time_prefix_within

__all__ = [
    "ARRAY",
    "CELL_DIFF",
    "CHANGES",
    "CONTENT",
    "CONTENT_DIFF",
    "CONTENT_HASHES",
    "GET_CONTENT_HASHES",
    "MESSAGE",
    "RESPONSE",
    "ROW_DIFF",
    "TABLE_DIFF",
    "VALUE_DIFF",
    "Gathered",
    "Validator",
    "check_content_diff",
    "check_response",
    "gather_changes",
    "gathered_stamps",
    "greatest",
    "is_content_hashes",
    "is_hash_tree",
    "is_protocol_message_valid",
    "is_request_id",
    "is_stamp",
]

# TinyBase's message numbers
RESPONSE: Final = 0
GET_CONTENT_HASHES: Final = 1
CONTENT_HASHES: Final = 2
CONTENT_DIFF: Final = 3
TABLE_DIFF: Final = 4
ROW_DIFF: Final = 5
CELL_DIFF: Final = 6
VALUE_DIFF: Final = 7

# The stamps a walk accepts (its ``shape``):
#: ``[thing]`` or ``[thing, hlc]``: a protocol message (TinyBase's isStamp)
MESSAGE: Final = 0
#: those and ``[thing, hlc, hash]``: mergeable changes given to a store
CHANGES: Final = 1
#: only ``[thing, hlc, hash]``: mergeable content given to a store
CONTENT: Final = 2

ARRAY: Final = (list, tuple)
_MAX_INT: Final = 2**1024  # (an int at least this large is beyond every JavaScript number)

#: (every non-empty HLC, the values a store must look at again) of what a walk accepted
Gathered = tuple[list[str], list[Any]]


# -- the walk ----------------------------------------------------------------------------------


def _is_array(thing: Any, shape: int) -> bool:
    """A list or tuple; for a message, subclasses too (as TinyBase's ``isArray``)."""
    kind = type(thing)
    return kind is list or kind is tuple or (shape == MESSAGE and isinstance(thing, ARRAY))


def _items(stamp: Any) -> list[Any]:
    """A stamp array as a list: a list itself, a tuple copied; a subclass (a message may
    hold one) as its items as ``len`` and ``[]`` see them, none when there are more than a
    stamp holds (no shape accepts that length; an empty list fails the same checks).

    Why: the walk then reads stamps with the list's own fast length and indexing, compiled.
    """
    kind = type(stamp)
    if kind is list:
        return stamp  # type: ignore[no-any-return]
    if kind is tuple:
        return list(stamp)  # (a copy in C: the same items as ``len`` and ``[]`` see)
    length = len(stamp)
    return [stamp[index] for index in range(length)] if length <= 3 else []


def _stamp_hlc(stamp: list[Any], shape: int, hlcs: list[str]) -> bool:
    """A stamp array's length, HLC (if any: a str, empty or of 16 characters, gathered into
    ``hlcs`` for the alphabet check) and hash (if any: a finite number) fit ``shape``."""
    length = len(stamp)
    if length == 3:
        if shape == MESSAGE:
            return False
        hash_ = stamp[2]
        kind = type(hash_)
        if kind is float:
            number: float = hash_
            if number - number != 0:  # (not finite)
                return False
        elif kind is not int:
            return False
    elif length != 2:
        return length == 1 and shape != CONTENT
    elif shape == CONTENT:
        return False
    hlc = stamp[1]
    if type(hlc) is not str:
        return False
    text: str = hlc
    if text:
        if len(text) != 16:
            return False
        hlcs.append(text)
    return True


def _leaf_stamps(things: Any, shape: int, hlcs: list[str], special: list[Any]) -> bool:
    """Every stamp of a row's cells (or of the values) fits ``shape`` and holds a cell or
    value TinyBase accepts in a message; object cells, ``"\\ufffd"`` strings and numbers
    beyond 2**53 are gathered into ``special`` (a store checks them further)."""
    if type(things) is not dict:
        return False
    cells: dict[Any, Any] = things
    for key, thing in cells.items():
        kind = type(thing)
        if type(key) is not str or (kind is not list and kind is not tuple):
            return False
        stamp = _items(thing)
        if not _stamp_hlc(stamp, shape, hlcs):
            return False
        value = stamp[0]
        kind = type(value)
        if kind is str:
            text: str = value
            if text.startswith(JSON_PREFIX):
                special.append(value)
        elif kind is int:
            whole: int = value
            if not -SAFE_INT_LIMIT <= whole <= SAFE_INT_LIMIT:
                if not -_MAX_INT < whole < _MAX_INT:
                    return False
                special.append(value)
        elif kind is float:
            number: float = value
            if not -SAFE_FLOAT_LIMIT < number < SAFE_FLOAT_LIMIT:
                if number - number != 0:  # (not finite)
                    return False
                special.append(value)
        elif kind is dict or kind is list or kind is tuple:
            special.append(value)
        elif kind is not bool and value is not None:
            return False
    return True


def _stamps(thing: Any, depth: int, shape: int, hlcs: list[str], special: list[Any]) -> bool:
    """A stamp of ``depth`` levels of maps (3: tables, 2: a table, 1: a row or the values)
    fits ``shape``, gathering as :func:`_leaf_stamps` does."""
    if not _is_array(thing, shape):
        return False
    stamp = _items(thing)
    if not _stamp_hlc(stamp, shape, hlcs):
        return False
    children = stamp[0]
    if depth == 1:
        return _leaf_stamps(children, shape, hlcs, special)
    if type(children) is not dict:
        return False
    maps: dict[Any, Any] = children
    for key, child in maps.items():
        if type(key) is not str or not _stamps(child, depth - 1, shape, hlcs, special):
            return False
    return True


def _gathered(stamps: tuple[tuple[Any, int], ...], shape: int) -> Gathered | None:
    hlcs: list[str] = []
    special: list[Any] = []
    for stamp, depth in stamps:
        if not _stamps(stamp, depth, shape, hlcs, special):
            return None
    return _alphabet_checked(hlcs, special)


def _alphabet_checked(hlcs: list[str], special: list[Any]) -> Gathered | None:
    """What a walk gathered, or None when an HLC has a character outside the alphabet."""
    # every HLC gathered has 16 characters; their alphabet is checked here at once
    if hlcs and not only_hlc_chars("".join(hlcs)):
        return None
    return hlcs, special


def gathered_stamps(*stamps: tuple[Any, int]) -> Gathered | None:
    """What ``is_stamp(stamp, depth)`` of every ``(stamp, depth)`` gathers; None when one is
    not a valid stamp of a message."""
    return _gathered(stamps, MESSAGE)


def is_stamp(stamp: Any, depth: int) -> bool:
    """TinyBase's ``isStamp`` nested ``depth`` levels (3: tables, 1: values), ``depth >= 1``."""
    return _gathered(((stamp, depth),), MESSAGE) is not None


def gather_changes(body: Any, shape: int) -> Gathered | None:
    """Walk mergeable content or changes ``[tables stamp, values stamp(, 1)]`` (content:
    no third element) accepting the stamps of ``shape``; None when invalid."""
    if not _is_array(body, shape):
        return None
    length = len(body)
    if length != 2:
        if shape == CONTENT or length != 3:
            return None
        version = body[2]
        kind = type(version)
        if (kind is not int and kind is not float) or version != 1:
            return None
    hlcs: list[str] = []
    special: list[Any] = []
    if not _stamps(body[0], 3, shape, hlcs, special) or not _stamps(
        body[1], 1, shape, hlcs, special
    ):
        return None
    return _alphabet_checked(hlcs, special)


# -- the protocol's messages (TinyBase 10's isProtocolMessageValid) ---------------------------


def _is_hash(thing: Any) -> bool:
    if type(thing) is int:
        return 0 <= thing <= MAX_HASH
    if type(thing) is float:
        return math.isfinite(thing) and thing.is_integer() and 0 <= thing <= MAX_HASH
    return False


def is_hash_tree(tree: Any, depth: int) -> bool:
    """A map of hashes nested ``depth + 1`` levels (0: ``{id: hash}``)."""
    if type(tree) is not dict:
        return False
    for key, child in tree.items():
        if type(key) is not str:
            return False
        if depth:
            if not is_hash_tree(child, depth - 1):
                return False
        elif not _is_hash(child):
            return False
    return True


def is_content_hashes(body: Any) -> bool:
    """A ContentHashes body: ``[tables hash, values hash]``."""
    return isinstance(body, ARRAY) and len(body) == 2 and _is_hash(body[0]) and _is_hash(body[1])


def check_content_diff(body: Any) -> CheckedChanges | None:
    """TinyBase's check of a ContentDiff body, gathering what the store's own check needs.

    Returns the body as a :class:`CheckedChanges` carrying what the walk gathered (a store
    then finishes validating with :meth:`Validator.checked` instead of walking the body
    again), or None when the body is not a valid ContentDiff (the verdict of
    ``is_protocol_message_valid``).
    """
    gathered = gather_changes(body, MESSAGE)
    if gathered is None:
        return None
    checked = CheckedChanges(body)
    checked.hlcs, checked.special = gathered
    return checked


def check_response(body: Any) -> tuple[bool, Gathered | None]:
    """Whether ``body`` is a valid Response body, plus what the store needs when it is a
    diff pair ``[tables stamp, hash tree]`` (the shape a joiner's table diff arrives in)."""
    if is_content_hashes(body):
        return True, None
    if is_stamp(body, 3) or is_stamp(body, 1):
        return True, None
    if (
        isinstance(body, ARRAY)
        and len(body) == 2
        and (is_hash_tree(body[1], 0) or is_hash_tree(body[1], 1))
    ):
        gathered = gathered_stamps((body[0], 3))
        return gathered is not None, gathered
    return False, None


def is_request_id(request_id: Any) -> bool:
    """A message's request id: None or a str other than TinyBase's encoded undefined."""
    return request_id is None or (type(request_id) is str and request_id != UNDEFINED)


_BODY_CHECKS: Final[dict[int, Callable[[Any], bool]]] = {
    RESPONSE: lambda body: check_response(body)[0],
    GET_CONTENT_HASHES: lambda body: body == "" and type(body) is str,
    CONTENT_HASHES: is_content_hashes,
    CONTENT_DIFF: lambda body: gather_changes(body, MESSAGE) is not None,
    TABLE_DIFF: lambda body: is_hash_tree(body, 0),
    ROW_DIFF: lambda body: is_hash_tree(body, 1),
    CELL_DIFF: lambda body: is_hash_tree(body, 2),
    VALUE_DIFF: lambda body: is_hash_tree(body, 0),
}


def is_protocol_message_valid(request_id: Any, message: Any, body: Any) -> bool:
    """TinyBase 10's check of every received message (request id, number, body shape)."""
    if not is_request_id(request_id):
        return False
    if type(message) is float:
        if not math.isfinite(message) or not message.is_integer():
            return False
    elif type(message) is not int:  # (no math.isfinite on ints: past float range it raises)
        return False
    check = _BODY_CHECKS.get(int(message))
    return check is not None and check(body)


# -- the store's check (TinyBase's validateMergeable) --------------------------------------------


def greatest(hlcs: list[str]) -> str:
    """``max(hlcs)`` of a non-empty list, without the builtin's keyword-argument parsing (a
    process woken by a one-cell change runs it with cold caches)."""
    result = hlcs[0]
    for hlc in hlcs:
        if hlc > result:
            result = hlc
    return result


class Validator:
    """TinyBase's validateMergeable, with the future limit and flags fixed for one call.

    Args:
        max_time: the latest HLC time (ms) accepted; TinyBase's is now + 5 minutes.
        has_hashes: the data is content (every stamp ``[thing, hlc, hash]``), not changes.
        encoded: object cells arrive encoded (``"\\ufffd"`` + JSON), not as dicts and lists.

    After a True verdict, ``cells`` is the number of non-empty HLCs (the size of the data)
    and ``plain`` says that no cell is an object or a number beyond 2**53, so every cell
    can be stored as it arrived.
    """

    __slots__ = ("cells", "encoded", "has_hashes", "limit", "max_time", "plain")

    def __init__(self, max_time: Number, has_hashes: bool, encoded: bool) -> None:
        self.max_time = max_time
        self.has_hashes = has_hashes
        self.encoded = encoded
        self.cells = 0
        self.plain = True
        self.limit = future_limit(max_time)

    def within_future_limit(self, hlcs: list[str]) -> bool:
        """Every HLC (well-formed, non-empty) at most ``max_time``."""
        if self.limit >= 0:
            return time_prefix_within(greatest(hlcs)[:7], self.limit)
        max_time = self.max_time
        return all(is_hlc(hlc, max_time) for hlc in hlcs)

    def checked(self, data: CheckedChanges) -> bool:
        """``mergeable(data)`` for changes whose shape the engine checked
        (:func:`check_content_diff`): what remains is the special values and the limit."""
        return self._finish(data.hlcs, data.special)

    def mergeable(self, data: Any) -> bool:
        """Whether ``data`` is valid mergeable content (``has_hashes``) or changes."""
        gathered = gather_changes(data, CONTENT if self.has_hashes else CHANGES)
        return gathered is not None and self._finish(gathered[0], gathered[1])

    def _finish(self, hlcs: list[str], special: list[Any]) -> bool:
        """The store's questions beyond a message's: special values a store can hold (an
        encoded object cell must decode, an object must be JSON, an int a finite JavaScript
        number) and every HLC within the future limit."""
        for value in special:
            kind = type(value)
            if kind is str:
                # an encoded object cell must really hold a JSON object or array: TinyBase
                # would merge the stamp and then fail to decode it on every read
                if not self.encoded or encode_accepted(value) is ABSENT:
                    return False
                continue
            if kind is int:
                if not fits_js_number(value):
                    return False
            elif kind is dict or kind is list:
                try:
                    check_json(value)
                except (TypeError, ValueError, RecursionError):
                    return False
            elif kind is not float:
                return False  # (a tuple: a message may hold one, a store may not)
            self.plain = False
        self.cells = len(hlcs)
        return not hlcs or self.within_future_limit(hlcs)
