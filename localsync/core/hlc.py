"""TinyBase's hybrid logical clock (HLC), string for string.

An HLC is 16 characters of the 64-letter alphabet: 7 for the 42-bit logical time (ms),
4 for the 24-bit counter and 5 for the 30-bit client id. Conflicts are resolved by plain
string comparison, so our strings must equal TinyBase's for the same unique id, clock and
operations, including its JavaScript quirks (float division then ToInt32 when encoding,
counter carry at 2**24, a 5-minute limit on how far ahead a remote clock may pull ours,
invalid characters decoding as 0).

``get_next_hlc`` runs once per cell write, so its common path avoids the general encoder:
the 7-character time prefix is cached while the millisecond does not change and the counter
is encoded from a 4096-entry table of character pairs.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from typing import Any, Final, NamedTuple

from localsync.core.codec import ALPHABET_PATTERN, ENCODE, SAFE_INT_LIMIT, get_unique_id
from localsync.core.hash import get_hash

__all__ = [
    "HLC_MAX_FUTURE_OFFSET",
    "HlcFunctions",
    "clock_with_deferred_seen",
    "decode_hlc",
    "decode_hlc_time",
    "encode_hlc_parts",
    "future_limit",
    "get_client_id_from_unique_id",
    "get_hlc_functions",
    "is_hlc",
    "real_now",
    "time_prefix_within",
]

HLC_MAX_FUTURE_OFFSET: Final = 5 * 60 * 1000  # ms a remote HLC may be ahead of our clock

_SHIFT24: Final = 2**24
_DECODE: Final[dict[str, int]] = {char: index for index, char in enumerate(ENCODE)}
_DECODE_BYTES: Final = bytes(_DECODE.get(chr(byte), 0) for byte in range(256))  # (for translate)
_PAIRS: Final[tuple[str, ...]] = tuple(a + b for a in ENCODE for b in ENCODE)  # 12 bits -> 2 chars
_MAX_TIME: Final = 2**42 - 1
_HLC_RE: Final = re.compile(ALPHABET_PATTERN + "{16}")
_TIME_SHIFTS: Final = (36, 30, 24, 18, 12, 6, 0)
_COUNTER_SHIFTS: Final = (18, 12, 6, 0)

#: Times and counters are ints from the clock, floats only from odd inputs. Annotated as
#: ``float``, mypyc would pass them as C doubles: every int converted, and the exact int
#: paths below (``type(x) is int``) never taken in the compiled build.
Number = int | float


def _encode_digit_js(number: float, shift: int) -> str:
    """``ENCODE[ToInt32(number / 2**shift) & 63]`` with JavaScript number semantics."""
    quotient = number / (1 << shift)
    if not math.isfinite(quotient):
        return ENCODE[0]  # ToInt32(NaN or +-Infinity) is 0
    return ENCODE[int(quotient) & 63]  # int() truncates toward zero, as ToInt32 does


def _to_js_number(number: Number) -> float:
    try:
        return float(number)
    except OverflowError:
        return math.inf if number > 0 else -math.inf


def _encode_digits(number: Number, shifts: tuple[int, ...]) -> str:
    if type(number) is int and 0 <= number <= SAFE_INT_LIMIT:
        # exact: for such integers truncating number / 2**k is number >> k
        return "".join([ENCODE[(number >> shift) & 63] for shift in shifts])
    js_number = _to_js_number(number)
    return "".join([_encode_digit_js(js_number, shift) for shift in shifts])


def _encode_time(logical_time: Number) -> str:
    if type(logical_time) is int and 0 <= logical_time <= SAFE_INT_LIMIT:
        # (an f-string: one string built, where ``+`` concatenates three times)
        return (
            f"{_PAIRS[(logical_time >> 30) & 4095]}{_PAIRS[(logical_time >> 18) & 4095]}"
            f"{_PAIRS[(logical_time >> 6) & 4095]}{ENCODE[logical_time & 63]}"
        )
    return _encode_digits(logical_time, _TIME_SHIFTS)


def _encode_counter(counter: Number) -> str:
    if type(counter) is int and 0 <= counter <= SAFE_INT_LIMIT:
        return _PAIRS[(counter >> 12) & 4095] + _PAIRS[counter & 4095]
    return _encode_digits(counter, _COUNTER_SHIFTS)


def get_client_id_from_unique_id(unique_id: str) -> str:
    """The 5-character client id TinyBase derives from a store's unique id."""
    h = get_hash(unique_id)
    return (
        ENCODE[(h >> 24) & 63]
        + ENCODE[(h >> 18) & 63]
        + ENCODE[(h >> 12) & 63]
        + ENCODE[(h >> 6) & 63]
        + ENCODE[h & 63]
    )


def encode_hlc_parts(logical_time: Number, counter: Number, client_id: str) -> str:
    """HLC string from its parts, ``client_id`` being the 5-character id itself."""
    return _encode_time(logical_time) + _encode_counter(counter) + client_id


def _digits(hlc: str) -> bytes:
    """Each character's 6-bit value (0 outside the alphabet, as TinyBase decodes it), for an
    ASCII ``hlc``: one C call, cheaper with cold caches than looking character pairs up."""
    return hlc.encode("ascii").translate(_DECODE_BYTES)


def _time_of(d: bytes) -> int:
    """The logical time held by the first 7 of :func:`_digits`."""
    return (
        (d[0] << 36) | (d[1] << 30) | (d[2] << 24) | (d[3] << 18) | (d[4] << 12) | (d[5] << 6)
    ) | d[6]


def decode_hlc_time(hlc: str) -> int:
    """Logical time of an HLC; characters outside the alphabet or missing count as 0."""
    if len(hlc) >= 7 and hlc.isascii():
        return _time_of(_digits(hlc))
    get = _DECODE.get
    result = 0
    for char in hlc[:7]:
        result = (result << 6) | get(char, 0)
    return result << (6 * (7 - min(len(hlc), 7)))


def decode_hlc(hlc: str) -> tuple[int, int, str]:
    """``(logical_time, counter, client_id)``; the client id is ``hlc[11:]``, any length."""
    if len(hlc) >= 11 and hlc.isascii():
        d = _digits(hlc)
        return _time_of(d), (d[7] << 18) | (d[8] << 12) | (d[9] << 6) | d[10], hlc[11:]
    get = _DECODE.get
    counter = 0
    for char in hlc[7:11]:
        counter = (counter << 6) | get(char, 0)
    counter <<= 6 * (4 - min(max(len(hlc) - 7, 0), 4))
    return decode_hlc_time(hlc), counter, hlc[11:]


# (time limit, the 7-character time prefix of its floor) of the last limit encoded
_limit_cache: tuple[Number, str] = (-1, "")


def future_limit(max_time: Number) -> int:
    """The integer limit of "HLC time <= max_time" for :func:`time_prefix_within`; -1 when
    ``max_time`` is not finite or above the largest HLC time (then HLCs must be decoded)."""
    if type(max_time) is int:
        limit = max_time
    else:
        limit = math.floor(max_time) if math.isfinite(max_time) else -1
    return limit if 0 <= limit <= _MAX_TIME else -1


def time_prefix_within(time_prefix: str, max_logical_time: Number) -> bool:
    """A well-formed HLC's ``time_prefix`` (its first 7 characters) encodes a time at most
    ``max_logical_time`` (not NaN).

    The alphabet is in ASCII order, so comparing prefixes replaces decoding each stamp. The
    limit's own prefix is cached, and since it only grows with the limit, a prefix at or
    below an earlier, smaller limit's is within this one too: a received change, checked in
    a new millisecond each time, rarely needs a limit encoded.
    """
    global _limit_cache
    cached_time, cached_prefix = _limit_cache
    if time_prefix <= cached_prefix and cached_time <= max_logical_time:
        return True
    if cached_time == max_logical_time:
        return False
    if max_logical_time >= _MAX_TIME:
        prefix = "zzzzzzz"
    elif max_logical_time < 0:
        prefix = ""  # nothing non-empty is <= ""
    else:
        prefix = _encode_time(math.floor(max_logical_time))
    _limit_cache = (max_logical_time, prefix)  # (one assignment: threads see a matching pair)
    return time_prefix <= prefix


def is_hlc(hlc: object, max_logical_time: Number) -> bool:
    """TinyBase's ``isHlc``: ``""``, or 16 alphabet characters not later than the limit.

    Stores use it to refuse changes stamped too far in the future (a peer with a broken
    clock must not drag every replica's clock along).
    """
    if type(hlc) is not str or len(hlc) != 16:
        return hlc == ""
    if _HLC_RE.fullmatch(hlc) is None or max_logical_time != max_logical_time:  # NaN limit
        return False
    return time_prefix_within(hlc[:7], max_logical_time)


def real_now() -> int:
    """The real clock in milliseconds since the epoch (the default ``get_now``)."""
    return time.time_ns() // 1_000_000


class HlcFunctions(NamedTuple):
    """The seven clock functions, in TinyBase's order (so they unpack like its array)."""

    get_next_hlc: Callable[[], str]
    seen_hlc: Callable[..., None]
    encode_hlc: Callable[..., str]
    decode_hlc: Callable[[str], tuple[int, int, str]]
    get_last_logical_time: Callable[[], Number]
    get_last_counter: Callable[[], int]
    get_client_id: Callable[[], str]


def get_hlc_functions(
    unique_id: str | None = None, get_now: Callable[[], Number] | None = None
) -> HlcFunctions:
    """A clock as TinyBase's ``getHlcFunctions(uniqueId, getNow)``.

    ``unique_id`` seeds the client id (a random one when None); ``get_now`` returns
    milliseconds since the epoch (default: the real clock). Returns a named tuple of
    ``get_next_hlc, seen_hlc, encode_hlc, decode_hlc, get_last_logical_time,
    get_last_counter, get_client_id``.
    """
    return clock_with_deferred_seen(unique_id, get_now)[0]


def clock_with_deferred_seen(
    unique_id: str | None = None, get_now: Callable[[], Number] | None = None
) -> tuple[HlcFunctions, Callable[[str], None]]:
    """:func:`get_hlc_functions` plus ``seen_hlc_later(hlc)``, for a MergeableStore.

    Why: a store calls ``seen_hlc`` after every merge, but its clock is only read when it
    next stamps a local write (or a getter asks). A process that mostly receives (a channel
    reader) paid the HLC's format check, its decoding and the fold on every message.
    ``seen_hlc_later`` takes an HLC the merge has
    already validated (format and future limit), keeps only the greatest one and the latest
    ``now``, and every other function folds that in first. The result is the same as calling
    ``seen_hlc`` each time: HLC strings order like their (time, counter) pairs, and the
    fold's outcome depends only on the greatest remote pair and the greatest ``now``.
    """
    now_fn: Callable[[], Number] = real_now if get_now is None else get_now
    # the real clock is called directly (a native call once compiled), not through now_fn
    real_clock = now_fn is real_now
    client_id = get_unique_id(5) if unique_id is None else get_client_id_from_unique_id(unique_id)
    last_logical_time: Any = 0  # (int or float, as the clock gives: Any, also for mypyc)
    last_counter = -1
    cached_time: Any = -1
    cached_prefix = ""
    pairs = _PAIRS
    # what seen_hlc_later noted and the clock has not folded in yet
    pending = False
    pending_hlc = ""  # the greatest remote HLC ("" when none: remote time and counter 0)
    pending_now: Any = None  # the greatest now at those calls (None: no comparable now)

    def fold(remote_time: Any, remote_counter: int, now: Any) -> None:
        nonlocal last_logical_time, last_counter
        previous = last_logical_time
        if now is None:
            last_logical_time = max(previous, remote_time)
        else:
            last_logical_time = max(previous, remote_time, now)
        if last_logical_time == previous:
            if last_logical_time == remote_time:
                last_counter = max(last_counter, remote_counter)
        else:
            last_counter = remote_counter if last_logical_time == remote_time else -1

    def fold_pending() -> None:
        nonlocal pending, pending_hlc, pending_now
        hlc = pending_hlc
        now = pending_now
        pending = False
        pending_hlc = ""
        pending_now = None
        if hlc:
            remote_time, remote_counter, _ = decode_hlc(hlc)
            fold(remote_time, remote_counter, now)
        else:
            fold(0, 0, now)

    def seen_hlc_later(hlc: str) -> None:
        nonlocal pending, pending_hlc, pending_now
        now = real_now() if real_clock else now_fn()
        if now != now:  # NaN: seen_hlc refuses every HLC, and a NaN never wins its max
            if not hlc:
                pending = True
            return
        if hlc and not time_prefix_within(hlc[:7], now + HLC_MAX_FUTURE_OFFSET):
            return  # (seen_hlc's own future check, at this call's now)
        pending = True
        if hlc > pending_hlc:
            pending_hlc = hlc
        if pending_now is None or now > pending_now:
            pending_now = now

    def get_next_hlc() -> str:
        nonlocal last_logical_time, last_counter, cached_time, cached_prefix
        if pending:
            fold_pending()
        # inline seen_hlc() (no remote HLC: remote time and counter are both 0)
        now = real_now() if real_clock else now_fn()
        if now > last_logical_time:
            last_logical_time = now
            last_counter = 0  # -1, then incremented below
        else:
            if last_logical_time == 0 and last_counter < 0:
                last_counter = 0  # the remote [0, 0] ties with a zero clock
            last_counter += 1
            if last_counter == _SHIFT24:
                last_logical_time += 1
                last_counter = 0
        if last_logical_time != cached_time:
            cached_prefix = _encode_time(last_logical_time)
            cached_time = last_logical_time
        counter = last_counter
        return f"{cached_prefix}{pairs[counter >> 12]}{pairs[counter & 4095]}{client_id}"

    def seen_hlc(hlc: object = None) -> None:
        if pending:
            fold_pending()
        now = real_now() if real_clock else now_fn()
        if hlc is None or hlc == "":
            remote_time: Any = 0
            remote_counter = 0
        elif type(hlc) is str and len(hlc) == 16 and _HLC_RE.fullmatch(hlc) is not None:
            # is_hlc(hlc, now + HLC_MAX_FUTURE_OFFSET) with the limit compared to the decoded
            # time (needed anyway) instead of encoded: the same verdict, NaN included
            remote_time, remote_counter, _ = decode_hlc(hlc)
            if not remote_time <= now + HLC_MAX_FUTURE_OFFSET:
                return
        else:
            return
        fold(remote_time, remote_counter, now)

    def encode_hlc(
        logical_time: Number, counter: Number, client_unique_id: str | None = None
    ) -> str:
        return (
            _encode_time(logical_time)
            + _encode_counter(counter)
            + (
                client_id
                if client_unique_id is None
                else get_client_id_from_unique_id(client_unique_id)
            )
        )

    def get_last_logical_time() -> Number:
        if pending:
            fold_pending()
        return last_logical_time

    def get_last_counter() -> int:
        if pending:
            fold_pending()
        return last_counter

    def get_client_id() -> str:
        return client_id

    functions = HlcFunctions(
        get_next_hlc,
        seen_hlc,
        encode_hlc,
        decode_hlc,
        get_last_logical_time,
        get_last_counter,
        get_client_id,
    )
    return functions, seen_hlc_later
