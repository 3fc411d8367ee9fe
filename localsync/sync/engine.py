"""The sans-I/O sync engine: TinyBase's synchronizer protocol with no sockets and no asyncio.

Inputs: :meth:`SyncEngine.receive` (a peer's message, validated here; invalid ones are reported
as ``tinybase:14``), :meth:`~SyncEngine.pull` (TinyBase's ``getChangesFromOtherStore``),
:meth:`~SyncEngine.send_content_diff` / :meth:`~SyncEngine.send_content_hashes` (a save),
:meth:`~SyncEngine.tick` (time passed), :meth:`~SyncEngine.peer_left`.
Outputs: :meth:`~SyncEngine.data_to_send` (:class:`Outgoing` messages in send order),
:meth:`~SyncEngine.events_received` (:class:`ContentDiffReceived`, :class:`PeerChangesPulled`,
:class:`PullFinished`: the changes to apply and the pulls that ended),
:meth:`~SyncEngine.next_deadline`, and errors reported to ``on_ignored_error``.

Messages (bodies are the *encoded* forms: object cells as U+FFFD + JSON, undefined as U+FFFC):
0 Response, 1 GetContentHashes, 2 ContentHashes, 3 ContentDiff, 4 GetTableDiff,
5 GetRowDiff, 6 GetCellDiff, 7 GetValueDiff. Optional anti-entropy (``anti_entropy_seconds``)
uses only these messages. Design: docs/design.md, "The sync engine".
"""

from __future__ import annotations

import heapq
import math
import random
import time
from collections.abc import Callable
from typing import Any, Final, NamedTuple

from localsync.core.checked_changes import CheckedChanges
from localsync.core.codec import get_unique_id
from localsync.core.protocols import HashTreeStore
from localsync.core.validation import ARRAY as _ARRAY
from localsync.core.validation import (
    CELL_DIFF,
    CONTENT_DIFF,
    CONTENT_HASHES,
    GET_CONTENT_HASHES,
    RESPONSE,
    ROW_DIFF,
    TABLE_DIFF,
    VALUE_DIFF,
    Gathered,
    check_content_diff,
    check_response,
    is_protocol_message_valid,
)
from localsync.core.validation import gathered_stamps as _gathered_stamps
from localsync.core.validation import is_content_hashes as _is_content_hashes
from localsync.core.validation import is_request_id as _is_request_id
from localsync.core.validation import is_stamp as _is_stamp
from localsync.errors import TinyBaseError

__all__ = [
    "CELL_DIFF",
    "CONTENT_DIFF",
    "CONTENT_HASHES",
    "GET_CONTENT_HASHES",
    "MAX_PENDING_REQUESTS",
    "MAX_POSTPONED_ROUNDS",
    "MAX_PULL_RESTARTS",
    "RESPONSE",
    "ROW_DIFF",
    "TABLE_DIFF",
    "VALUE_DIFF",
    "ContentDiffReceived",
    "Event",
    "Message",
    "Outgoing",
    "PeerChangesPulled",
    "PullFinished",
    "SyncEngine",
    "check_content_diff",
    "is_protocol_message_valid",
    "set_hlc",
]

Message = {
    "Response": RESPONSE,
    "GetContentHashes": GET_CONTENT_HASHES,
    "ContentHashes": CONTENT_HASHES,
    "ContentDiff": CONTENT_DIFF,
    "GetTableDiff": TABLE_DIFF,
    "GetRowDiff": ROW_DIFF,
    "GetCellDiff": CELL_DIFF,
    "GetValueDiff": VALUE_DIFF,
}

MAX_PENDING_REQUESTS = 100
#: How many times a pull that asked everyone may start over when its peer leaves.
MAX_PULL_RESTARTS = 3
ERROR_SYNC_RESPONSE = 3
ERROR_SYNC_MESSAGE: Final = 14
ERROR_SYNC_OVERFLOW = 15


class Outgoing(NamedTuple):
    """One message to send: ``to`` is ``None`` for a broadcast."""

    to: str | None
    request_id: str | None
    message: int
    body: Any


# -- stamps -------------------------------------------------------------------------------------


def _stamp_new_obj(hlc: str = "") -> list[Any]:
    return [{}, hlc] if hlc else [{}]


def _latest_hlc(hlc1: Any, hlc2: Any) -> str:
    a = hlc1 if hlc1 is not None else ""
    b = hlc2 if hlc2 is not None else ""
    return a if a > b else b


def _hlc_of(stamp: Any) -> Any:
    return stamp[1] if len(stamp) > 1 else None


def _merge_tables_stamps(tables_stamp: list[Any], other: Any) -> None:
    """TinyBase's ``mergeTablesStamps``, copying each level it changes.

    Copy-on-write because bodies may be shared with the sender (in-process transports).
    """
    table_stamps2 = other[0]
    tables = dict(tables_stamp[0])
    tables_stamp[0] = tables
    for table_id, table_stamp2 in table_stamps2.items():
        old_table = tables.get(table_id)
        table_stamp = list(old_table) if old_table is not None else [{}]
        table_stamp[0] = rows = dict(table_stamp[0])
        for row_id, row_stamp2 in table_stamp2[0].items():
            old_row = rows.get(row_id)
            row_stamp = list(old_row) if old_row is not None else [{}]
            row_stamp[0] = cells = dict(row_stamp[0])
            for cell_id, cell_stamp2 in row_stamp2[0].items():
                cell_hlc = _hlc_of(cell_stamp2)
                cells[cell_id] = [cell_stamp2[0], cell_hlc] if cell_hlc else [cell_stamp2[0]]
            set_hlc(row_stamp, _latest_hlc(_hlc_of(row_stamp), _hlc_of(row_stamp2)))
            rows[row_id] = row_stamp
        set_hlc(table_stamp, _latest_hlc(_hlc_of(table_stamp), _hlc_of(table_stamp2)))
        tables[table_id] = table_stamp
    set_hlc(tables_stamp, _latest_hlc(_hlc_of(tables_stamp), _hlc_of(other)))


def set_hlc(stamp: list[Any], hlc: str) -> None:
    if len(stamp) > 1:
        stamp[1] = hlc
    else:
        stamp.append(hlc)


def _is_diff_pair(body: Any) -> bool:
    """Shape of a table/row diff response, for a body that already passed validation.

    Of the four Response shapes only ``[tables stamp, hash tree]`` has a dict second item,
    so this cheap test suffices and the body is not walked twice.
    """
    return isinstance(body, _ARRAY) and len(body) == 2 and type(body[1]) is dict


def _changes_are_empty(changes: Any) -> bool:
    return not changes[0][0] and not changes[1][0]


#: rounds of anti-entropy skipped in a row while ContentDiffs stream (then one runs anyway)
MAX_POSTPONED_ROUNDS = 3

# -- events: what the engine hands back besides messages -------------------------------------


class ContentDiffReceived:
    """A peer's ContentDiff, received while auto-loading: apply ``changes`` to the store."""

    __slots__ = ("changes",)

    def __init__(self, changes: Any) -> None:
        self.changes = changes

    def __repr__(self) -> str:
        return f"ContentDiffReceived({self.changes!r})"


class PeerChangesPulled:
    """A pull started by a peer's ContentHashes ended (auto-loading): apply ``changes``.

    ``changes`` is None when the pull failed (the failure was reported): reload instead.
    """

    __slots__ = ("changes",)

    def __init__(self, changes: Any) -> None:
        self.changes = changes

    def __repr__(self) -> str:
        return f"PeerChangesPulled({self.changes!r})"


class PullFinished:
    """The pull that :meth:`SyncEngine.pull` started (a load) ended.

    ``changes`` are mergeable changes ``[tables_stamp, values_stamp, 1]``, or None when the
    pull failed (the failure was reported).
    """

    __slots__ = ("changes", "pull_id")

    def __init__(self, pull_id: str, changes: Any) -> None:
        self.pull_id = pull_id
        self.changes = changes

    def __repr__(self) -> str:
        return f"PullFinished({self.pull_id!r}, {self.changes!r})"


Event = ContentDiffReceived | PeerChangesPulled | PullFinished


# -- the pull state machine ---------------------------------------------------------------------


class _Pull:
    """One ``getChangesFromOtherStore`` run, advanced by responses instead of awaits."""

    __slots__ = (
        "asked_everyone",
        "for_load",
        "gathered",
        "other",
        "other_values_hash",
        "restarts",
        "tables_changes",
        "tx_id",
        "values_hash",
    )

    def __init__(self, tx_id: str, other: str | None, for_load: bool) -> None:
        self.tx_id = tx_id
        self.other = other
        # started by pull() for a load (ends in PullFinished), else by a peer's hashes
        # (ends in PeerChangesPulled)
        self.for_load = for_load
        self.tables_changes: list[Any] = _stamp_new_obj()
        self.values_hash: Any = None
        self.other_values_hash: Any = None
        # began with a broadcast GetContentHashes: any peer will do, so a peer that leaves
        # mid-sequence can be replaced by asking everyone again
        self.asked_everyone = False
        self.restarts = 0
        # what the responses' checks gathered for the store (check_content_diff), while
        # the result is exactly a table diff plus a value diff; None once rows get merged
        self.gathered: Gathered | None = ([], [])

    def gather(self, more: Gathered) -> None:
        """Add a response's gatherings, unless the result stopped being a plain diff."""
        if self.gathered is not None:
            self.gathered[0].extend(more[0])
            self.gathered[1].extend(more[1])


class _Pending:
    __slots__ = ("deadline", "message", "pull", "sent", "to")

    def __init__(
        self, to: str | None, message: int, pull: _Pull, sent: float, deadline: float
    ) -> None:
        self.to = to
        self.message = message
        self.pull = pull
        self.sent = sent
        self.deadline = deadline


class _Peer:
    __slots__ = ("hashes", "last_heard")

    def __init__(self, now: float) -> None:
        self.hashes: tuple[Any, Any] | None = None
        self.last_heard = now


class SyncEngine:
    """TinyBase's createCustomSynchronizer protocol, driven by method calls.

    ``store`` is only read here (hashes and diffs); changes to apply are handed back as events,
    so that the driver (a Synchronizer) applies them as loads, not local writes.
    """

    def __init__(
        self,
        store: HashTreeStore,
        *,
        request_timeout_seconds: float,
        on_ignored_error: Callable[[BaseException], None] | None = None,
        on_receive: Callable[[str, str | None, int, Any], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        transaction_id: Callable[[], str] | None = None,
        request_suffix: Callable[[], str] | None = None,
        anti_entropy_seconds: float | None = None,
        heartbeat_every: int = 4,
        max_pending_requests: int = MAX_PENDING_REQUESTS,
    ) -> None:
        if anti_entropy_seconds is not None and not anti_entropy_seconds > 0:
            raise ValueError("anti_entropy_seconds must be a positive number or None")
        self.store = store
        self.request_timeout_seconds = float(request_timeout_seconds)
        # optional shorter bound for "who is there? send me your hashes": answering it is
        # cheap, so only the diffs that follow may deserve a long time-out
        self.broadcast_hashes_timeout_seconds: float | None = None
        self.on_ignored_error = on_ignored_error
        self.on_receive = on_receive
        self.clock = clock
        self._transaction_id = transaction_id or (lambda: get_unique_id(11))
        self._request_suffix = request_suffix or (lambda: get_unique_id(4))
        self.anti_entropy_seconds = anti_entropy_seconds
        # each period drawn from period * (1 +/- jitter), so that participants started
        # together do not keep their rounds in step; 0 unless a transport asks for it
        self.anti_entropy_jitter = 0.0
        self.random: Callable[[], float] = random.random
        self.heartbeat_every = max(1, heartbeat_every)
        self.max_pending_requests = max_pending_requests
        # state the driver sets
        self.syncing = False
        self.destroyed = False
        self.is_auto_loading: Callable[[], bool] = lambda: False
        self.is_auto_saving: Callable[[], bool] = lambda: False
        # internal
        self.sends = 0
        self.receives = 0
        self.ignored_errors = 0
        self.anti_entropy_announcements = 0
        self._outbox: list[Outgoing] = []
        self._events: list[Event] = []
        self._pending: dict[str, _Pending] = {}
        self._deadlines: list[tuple[float, str]] = []
        self._peers: dict[str, _Peer] = {}
        self._last_announced: tuple[Any, Any] | None = None
        self._probes: dict[str, float] = {}
        # the pull running from each peer: its repeated ContentHashes start no second pull
        self._pulling_from: dict[str, _Pull] = {}
        self.anti_entropy_probes = 0
        self._next_anti_entropy: float | None = None
        self._anti_entropy_periods = 0
        self._last_diff_traffic = -math.inf
        self._postponed_rounds = 0
        self.anti_entropy_postponed = 0

    # -- outputs ----------------------------------------------------------------------------

    def has_data_to_send(self) -> bool:
        return bool(self._outbox)

    def data_to_send(self) -> list[Outgoing]:
        """Take the queued messages (oldest first)."""
        out = self._outbox
        self._outbox = []
        return out

    def events_received(self) -> list[Event]:
        """Take the events (changes to apply, pulls that ended), oldest first.

        The list is the caller's to keep; do not modify it (an empty one is shared).
        """
        events = self._events
        if events:
            self._events = []
        return events

    def next_deadline(self) -> float | None:
        """When ``tick`` must next be called (``clock`` units), or None."""
        deadlines = self._deadlines
        while deadlines and deadlines[0][1] not in self._pending:
            heapq.heappop(deadlines)
        best = deadlines[0][0] if deadlines else None
        ae = self._next_anti_entropy if self.syncing else None
        if ae is not None and (best is None or ae < best):
            best = ae
        return best

    def pending_request_count(self) -> int:
        return len(self._pending)

    def _report(self, error: BaseException) -> None:
        self.ignored_errors += 1
        if self.on_ignored_error is not None:
            self.on_ignored_error(error)

    def _emit(self, to: str | None, request_id: str | None, message: int, body: Any) -> None:
        self.sends += 1
        # (tuple.__new__: the same Outgoing without the interpreted __new__ NamedTuple makes)
        self._outbox.append(tuple.__new__(Outgoing, (to, request_id, message, body)))

    def new_transaction_id(self) -> str:
        return self._transaction_id()

    # -- saves ------------------------------------------------------------------------------

    def send_content_diff(self, changes: Any) -> None:
        """Broadcast one transaction's encoded changes (without hashes)."""
        self._last_diff_traffic = self.clock()
        self._emit(None, self._transaction_id(), CONTENT_DIFF, changes)

    def send_content_hashes(self) -> None:
        """Broadcast this store's content hashes so that differing peers pull from us."""
        hashes = self.store.get_mergeable_content_hashes()
        self._last_announced = (hashes[0], hashes[1])
        self._emit(None, self._transaction_id(), CONTENT_HASHES, hashes)

    # -- requests ---------------------------------------------------------------------------

    def _request(self, pull: _Pull, to: str | None, message: int, body: Any) -> None:
        if self.destroyed:
            # nothing would ever time it out (a destroyed synchronizer has no timer), so a
            # pull that goes on after destroy must end here, not wait for ever
            self._fail(pull, TinyBaseError(ERROR_SYNC_RESPONSE, "destroyed"))
            return
        if len(self._pending) >= self.max_pending_requests:
            self._fail(pull, TinyBaseError(ERROR_SYNC_OVERFLOW, "requests"))
            return
        request_id = pull.tx_id + "." + self._request_suffix()
        now = self.clock()
        timeout = self.request_timeout_seconds
        cap = self.broadcast_hashes_timeout_seconds
        if cap is not None and to is None and message == GET_CONTENT_HASHES and cap < timeout:
            timeout = cap
        deadline = now + timeout
        self._pending[request_id] = _Pending(to, message, pull, now, deadline)
        heapq.heappush(self._deadlines, (deadline, request_id))
        self._emit(to, request_id, message, body)

    def reject_pending_requests(self, error: BaseException) -> None:
        """Fail every request in flight (destroy); their pulls report ``error``."""
        pending = self._pending
        self._pending = {}
        self._deadlines.clear()
        for entry in pending.values():
            self._fail(entry.pull, error)

    # -- the pull sequence --------------------------------------------------------------------

    def pull(
        self, other_client_id: str | None = None, other_content_hashes: Any = None
    ) -> str | None:
        """Ask a peer (or, with no hashes given, whoever answers first) what we are missing.

        Returns the pull's id: a :class:`PullFinished` event with that id carries the result.
        None when a pull from ``other_client_id`` already runs (it asks for the difference as
        it is when it asks).
        """
        pull = self._new_pull(other_client_id, other_content_hashes, None, True)
        return None if pull is None else pull.tx_id

    def _new_pull(
        self,
        other_client_id: str | None,
        other_content_hashes: Any,
        transaction_id: str | None,
        for_load: bool,
    ) -> _Pull | None:
        if other_client_id in self._pulling_from and other_content_hashes is not None:
            return None
        pull = _Pull(transaction_id or self._transaction_id(), other_client_id, for_load)
        if other_content_hashes is None:
            pull.asked_everyone = True
            self._request(pull, None, GET_CONTENT_HASHES, "")
        else:
            if other_client_id is not None:
                self._pulling_from[other_client_id] = pull
            self._on_content_hashes(pull, other_content_hashes)
        return pull

    def _fail(self, pull: _Pull, error: BaseException) -> None:
        self._pull_ended(pull)
        self._report(error)
        self._pulled(pull, None)

    def _pulled(self, pull: _Pull, changes: Any) -> None:
        """Hand a pull's result back as an event."""
        if pull.for_load:
            self._events.append(PullFinished(pull.tx_id, changes))
        elif not self.destroyed and (changes is None or not _changes_are_empty(changes)):
            # (in sync already: nothing to apply, where TinyBase applies an empty set)
            self._events.append(PeerChangesPulled(changes))

    def _pull_ended(self, pull: _Pull) -> None:
        other = pull.other
        if other is not None and self._pulling_from.get(other) is pull:
            del self._pulling_from[other]

    def _finish(self, pull: _Pull, values_stamp: Any) -> None:
        self._pull_ended(pull)
        gathered = pull.gathered
        if gathered is None:
            self._pulled(pull, [pull.tables_changes, values_stamp, 1])
            return
        changes = CheckedChanges([pull.tables_changes, values_stamp, 1])
        changes.hlcs, changes.special = gathered
        self._pulled(pull, changes)

    def _on_content_hashes(self, pull: _Pull, other_hashes: Any) -> None:
        other_tables_hash, other_values_hash = other_hashes
        tables_hash, values_hash = self.store.get_mergeable_content_hashes()
        pull.values_hash = values_hash
        pull.other_values_hash = other_values_hash
        if tables_hash != other_tables_hash:
            self._request(pull, pull.other, TABLE_DIFF, self.store.get_mergeable_table_hashes())
        else:
            self._values_step(pull)

    def _values_step(self, pull: _Pull) -> None:
        if pull.values_hash == pull.other_values_hash:
            self._finish(pull, _stamp_new_obj())
        else:
            self._request(pull, pull.other, VALUE_DIFF, self.store.get_mergeable_value_hashes())

    def _on_response(
        self, entry: _Pending, body: Any, from_client_id: str, gathered: Gathered | None = None
    ) -> None:
        pull = entry.pull
        message = entry.message
        store = self.store
        if message == GET_CONTENT_HASHES:
            if not _is_content_hashes(body):
                raise TinyBaseError(ERROR_SYNC_MESSAGE, "response")
            pull.other = from_client_id
            self._remember_peer_hashes(from_client_id, body)
            self._on_content_hashes(pull, body)
        elif message == TABLE_DIFF:
            if not _is_diff_pair(body):
                raise TinyBaseError(ERROR_SYNC_MESSAGE, "response")
            new_tables, differing = body
            pull.tables_changes = list(new_tables)
            if gathered is not None and not differing:
                pull.gather(gathered)
            else:
                pull.gathered = None  # rows will be merged in: the store checks in full
            if differing:
                self._request(pull, pull.other, ROW_DIFF, store.get_mergeable_row_hashes(differing))
            else:
                self._values_step(pull)
        elif message == ROW_DIFF:
            if not _is_diff_pair(body):
                raise TinyBaseError(ERROR_SYNC_MESSAGE, "response")
            new_rows, differing = body
            pull.gathered = None
            _merge_tables_stamps(pull.tables_changes, new_rows)
            if differing:
                self._request(
                    pull, pull.other, CELL_DIFF, store.get_mergeable_cell_hashes(differing)
                )
            else:
                self._values_step(pull)
        elif message == CELL_DIFF:
            if not _is_stamp(body, 3):
                raise TinyBaseError(ERROR_SYNC_MESSAGE, "response")
            pull.gathered = None
            _merge_tables_stamps(pull.tables_changes, body)
            self._values_step(pull)
        else:  # VALUE_DIFF
            values = _gathered_stamps((body, 1))  # (the same check as _is_stamp(body, 1))
            if values is None:
                raise TinyBaseError(ERROR_SYNC_MESSAGE, "response")
            pull.gather(values)
            self._finish(pull, body)

    # -- receiving ----------------------------------------------------------------------------

    def receive(self, from_client_id: Any, request_id: Any, message: Any, body: Any) -> None:
        """Handle one message from a peer; never raises into the transport (its arguments are
        whatever arrived, hence ``Any``: they are checked here)."""
        if self.destroyed:
            return
        # ContentDiffs and responses (a joiner's table diff) are checked once for the protocol
        # and, on the way, for the store that will merge them (see check_content_diff)
        checked: CheckedChanges | None = None
        gathered: Gathered | None = None
        if type(message) is not int or not _is_request_id(request_id):
            valid = is_protocol_message_valid(request_id, message, body)
        elif message == CONTENT_DIFF:
            checked = check_content_diff(body)
            valid = checked is not None
        elif message == RESPONSE:
            valid, gathered = check_response(body)
        else:
            valid = is_protocol_message_valid(request_id, message, body)
        if not valid:
            self._report(TinyBaseError(ERROR_SYNC_MESSAGE))
            return
        message = int(message)
        is_auto_loading = self.syncing or self.is_auto_loading()
        self.receives += 1
        if self.anti_entropy_seconds is not None:
            self._known_peer(from_client_id)
        if self.on_receive is not None:
            self.on_receive(from_client_id, request_id, message, body)
        try:
            self._dispatch(
                from_client_id,
                request_id,
                message,
                body if checked is None else checked,
                is_auto_loading,
                gathered,
            )
        except Exception as error:
            self._report(error)

    def _dispatch(
        self,
        from_client_id: str,
        request_id: str | None,
        message: int,
        body: Any,
        is_auto_loading: bool,
        gathered: Gathered | None = None,
    ) -> None:
        if message == RESPONSE:
            entry = self._pending.get(request_id) if request_id is not None else None
            if entry is not None and (entry.to is None or entry.to == from_client_id):
                del self._pending[request_id]  # type: ignore[arg-type]
                try:
                    self._on_response(entry, body, from_client_id, gathered)
                except Exception as error:
                    self._fail(entry.pull, error)
            elif request_id in self._probes:
                self._on_probe_answer(from_client_id, body, is_auto_loading)
            return
        if message == CONTENT_HASHES:
            self._remember_peer_hashes(from_client_id, body)
            if is_auto_loading:
                self._new_pull(from_client_id, body, request_id, False)
            return
        if message == CONTENT_DIFF:
            self._last_diff_traffic = self.clock()
            if is_auto_loading:
                self._events.append(ContentDiffReceived(body))
            return
        store = self.store
        if message == GET_CONTENT_HASHES:
            if not (self.syncing or self.is_auto_saving()):
                return
            response = store.get_mergeable_content_hashes()
        elif message == TABLE_DIFF:
            response = store.get_mergeable_table_diff(body)
        elif message == ROW_DIFF:
            response = store.get_mergeable_row_diff(body)
        elif message == CELL_DIFF:
            response = store.get_mergeable_cell_diff(body)
        else:  # VALUE_DIFF
            response = store.get_mergeable_value_diff(body)
        self._emit(from_client_id, request_id, RESPONSE, response)

    # -- peers and anti-entropy ---------------------------------------------------------------

    def _known_peer(self, client_id: str) -> _Peer:
        peer = self._peers.get(client_id)
        now = self.clock()
        if peer is None:
            peer = self._peers[client_id] = _Peer(now)
        else:
            peer.last_heard = now
        return peer

    def _remember_peer_hashes(self, client_id: str, hashes: Any) -> None:
        self._known_peer(client_id).hashes = (hashes[0], hashes[1])

    def forget_peer(self, client_id: str) -> None:
        """Stop expecting ``client_id`` to agree with us (it left)."""
        self._peers.pop(client_id, None)

    def peer_left(self, client_id: str) -> None:
        """``client_id`` is gone (its transport said so): stop waiting for its answers.

        A pull that began by asking everyone asks everyone again (at most
        ``MAX_PULL_RESTARTS`` times), so a joiner whose first answerer exits still gets the
        content from another peer; any other pull fails as a time-out would.
        """
        self.forget_peer(client_id)
        gone = [rid for rid, entry in self._pending.items() if entry.to == client_id]
        for request_id in gone:
            entry = self._pending.pop(request_id)
            pull = entry.pull
            if pull.asked_everyone and pull.restarts < MAX_PULL_RESTARTS and not self.destroyed:
                pull.restarts += 1
                pull.other = None
                pull.tables_changes = _stamp_new_obj()
                pull.gathered = ([], [])
                self._request(pull, None, GET_CONTENT_HASHES, "")
            else:
                self._fail(
                    pull,
                    TinyBaseError(
                        ERROR_SYNC_RESPONSE, f"{client_id}.{request_id}.{entry.message} (left)"
                    ),
                )

    def awaited_peers(self, min_wait: float, now: float | None = None) -> set[str]:
        """Peers that owe us an answer for at least ``min_wait`` seconds (liveness checks)."""
        if now is None:
            now = self.clock()
        return {
            entry.to
            for entry in self._pending.values()
            if entry.to is not None and now - entry.sent >= min_wait
        }

    def start(self) -> None:
        """Mark syncing (answer GetContentHashes, pull on ContentHashes) and arm anti-entropy."""
        self.syncing = True
        if self.anti_entropy_seconds is not None:
            self._next_anti_entropy = self.clock() + self._period()

    def _period(self) -> float:
        """The next anti-entropy period (``anti_entropy_jitter`` applied)."""
        period = self.anti_entropy_seconds or 1.0
        jitter = self.anti_entropy_jitter
        if jitter:
            period *= 1.0 + jitter * (2.0 * self.random() - 1.0)
        return period

    def stop(self) -> None:
        self.syncing = False
        self._next_anti_entropy = None

    def _anti_entropy_round(self, now: float) -> None:
        """One period: announce our hashes when useful; on heartbeats also probe everyone.

        Announcing lets peers pull what they miss from us. The probe (a broadcast
        GetContentHashes whose every answer we read) lets us pull what *we* miss from peers
        that never announce on their own, such as TinyBase's synchronizers.
        """
        period = self.anti_entropy_seconds or 1.0
        if (
            now - self._last_diff_traffic <= period
            and self._postponed_rounds < MAX_POSTPONED_ROUNDS
        ):
            self._postponed_rounds += 1
            self.anti_entropy_postponed += 1
            return
        self._postponed_rounds = 0
        self._anti_entropy_periods += 1
        # a peer silent for three heartbeats has left: stop announcing for its stale hashes
        horizon = now - 3 * self.heartbeat_every * period
        for client_id in [c for c, p in self._peers.items() if p.last_heard < horizon]:
            del self._peers[client_id]
        for probe_id in [r for r, expiry in self._probes.items() if expiry < now]:
            del self._probes[probe_id]
        heartbeat = self._anti_entropy_periods % self.heartbeat_every == 0
        hashes = tuple(self.store.get_mergeable_content_hashes())
        if (
            heartbeat
            or hashes != self._last_announced
            or any(peer.hashes != hashes for peer in self._peers.values())
        ):
            self.anti_entropy_announcements += 1
            self.send_content_hashes()
        if heartbeat:
            self.anti_entropy_probes += 1
            probe_id = self._transaction_id() + "." + self._request_suffix()
            self._probes[probe_id] = now + self.heartbeat_every * period
            self._emit(None, probe_id, GET_CONTENT_HASHES, "")

    def _on_probe_answer(self, from_client_id: str, body: Any, is_auto_loading: bool) -> None:
        if not _is_content_hashes(body):
            return
        self._remember_peer_hashes(from_client_id, body)
        if is_auto_loading and list(body) != list(self.store.get_mergeable_content_hashes()):
            self._new_pull(from_client_id, body, None, False)

    def tick(self, now: float | None = None) -> None:
        """Expire overdue requests and run anti-entropy when due."""
        if now is None:
            now = self.clock()
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            _, request_id = heapq.heappop(deadlines)
            entry = self._pending.pop(request_id, None)
            if entry is not None:
                self._fail(
                    entry.pull,
                    TinyBaseError(
                        ERROR_SYNC_RESPONSE,
                        f"{entry.to or ''}.{request_id}.{entry.message}",
                    ),
                )
        ae = self._next_anti_entropy
        if self.syncing and ae is not None and ae <= now and not self.destroyed:
            while ae <= now:
                ae += self._period()
            self._next_anti_entropy = ae
            try:
                self._anti_entropy_round(now)
            except Exception as error:
                self._report(error)
