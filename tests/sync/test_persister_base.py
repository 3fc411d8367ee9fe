"""The Persister base (TinyBase's createCustomPersister) with a real store and in-memory storage."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from localsync import create_mergeable_store
from localsync.sync.persister import Persister, Status, create_custom_persister

pytestmark = pytest.mark.timeout(30)


class Storage:
    """A dict standing in for a file: what the hooks read and write."""

    def __init__(self) -> None:
        self.content: Any = None
        self.writes: list[tuple[Any, Any]] = []
        self.listener: Any = None

    async def get(self) -> Any:
        await asyncio.sleep(0)  # a real await, as a file read would have
        return self.content

    async def set(self, get_content: Any, changes: Any = None) -> None:
        await asyncio.sleep(0)
        self.content = get_content()
        self.writes.append((self.content, changes))

    def add(self, listener: Any) -> str:
        self.listener = listener
        return "handle"

    def delete(self, handle: Any) -> None:
        assert handle == "handle"
        self.listener = None


def persister_for(store: Any, storage: Storage, **kw: Any) -> Persister:
    return create_custom_persister(
        store, storage.get, storage.set, storage.add, storage.delete, **kw
    )


def test_save_then_load_into_another_store() -> None:
    async def main() -> None:
        storage = Storage()
        a = create_mergeable_store()
        a.set_row("t", "r", {"c": 1, "obj": {"x": [1, 2]}})
        pa = persister_for(a, storage)
        await pa.save()
        assert pa.get_stats() == {
            "loads": 0,
            "saves": 1,
            "load_failures": 0,
            "save_failures": 0,
            "unsaved_seconds": 0.0,
        }
        # the persisted form is the encoded content: object cells stay strings
        assert storage.content == a.get_encoded_mergeable_content()
        b = create_mergeable_store()
        pb = persister_for(b, storage)
        await pb.load()
        assert b.get_tables() == a.get_tables()
        assert b.get_mergeable_content_hashes() == a.get_mergeable_content_hashes()
        assert pb.get_stats() == {
            "loads": 1,
            "saves": 0,
            "load_failures": 0,
            "save_failures": 0,
            "unsaved_seconds": 0.0,
        }
        await pa.destroy()
        await pb.destroy()

    asyncio.run(main())


def test_load_of_nothing_uses_initial_content_and_bad_content_is_reported() -> None:
    async def main() -> None:
        storage = Storage()
        errors: list[BaseException] = []
        store = create_mergeable_store()
        p = persister_for(store, storage, on_ignored_error=errors.append)
        await p.load([{"t": {"r": {"c": "default"}}}, {}])
        assert store.get_tables() == {"t": {"r": {"c": "default"}}} and errors == []
        storage.content = "garbage"
        other = create_mergeable_store()
        q = persister_for(other, storage, on_ignored_error=errors.append)
        await q.load([{}, {"v": 1}])
        assert [getattr(e, "code", None) for e in errors] == ["tinybase:1"]
        assert other.get_values() == {"v": 1}
        await p.destroy()
        await q.destroy()

    asyncio.run(main())


def test_auto_save_saves_each_transaction_with_hashes() -> None:
    async def main() -> None:
        storage = Storage()
        store = create_mergeable_store()
        p = persister_for(store, storage)
        statuses: list[int] = []
        p.add_status_listener(lambda persister, status: statuses.append(status))
        await p.start_auto_save()
        assert p.is_auto_saving()
        store.set_cell("t", "r", "c", 1)
        store.set_value("v", "x")
        await asyncio.sleep(0.01)
        assert len(storage.writes) == 3  # the initial full save, then one per transaction
        assert storage.writes[0][1] is None
        changes = storage.writes[1][1]
        assert changes[2] == 1
        assert len(changes[0][0]["t"][0]["r"][0]["c"]) == 3  # with hashes for persisters
        assert storage.content == store.get_encoded_mergeable_content()
        # overlapping saves share one "saving" period, as in TinyBase
        assert statuses[:2] == [2, 0] and statuses[-1] == 0 and set(statuses) == {0, 2}
        await p.stop_auto_save()
        store.set_value("v", "y")
        await asyncio.sleep(0.01)
        assert len(storage.writes) == 3
        await p.destroy()

    asyncio.run(main())


def test_auto_load_applies_pushed_changes_without_saving_them_back() -> None:
    async def main() -> None:
        storage = Storage()
        source = create_mergeable_store()
        source.set_cell("t", "r", "c", "v1")
        storage.content = source.get_encoded_mergeable_content()
        store = create_mergeable_store()
        p = persister_for(store, storage)
        await p.start_auto_persisting()
        assert store.get_cell("t", "r", "c") == "v1"
        writes_before = len(storage.writes)
        # the storage changes behind our back and tells us, with the new content
        source.set_cell("t", "r", "c", "v2")
        storage.listener(source.get_encoded_mergeable_content())
        assert store.get_cell("t", "r", "c") == "v2"  # applied synchronously
        await asyncio.sleep(0.01)
        assert len(storage.writes) == writes_before  # no echo
        # ...or without content: the persister loads
        source.set_cell("t", "r", "c", "v3")
        storage.content = source.get_encoded_mergeable_content()
        storage.listener()
        for _ in range(100):
            if store.get_cell("t", "r", "c") == "v3":
                break
            await asyncio.sleep(0.001)
        assert store.get_cell("t", "r", "c") == "v3"
        # a local write is still saved
        store.set_cell("t", "r", "d", 1)
        await asyncio.sleep(0.01)
        assert len(storage.writes) == writes_before + 1
        await p.destroy()
        assert not p.is_auto_loading() and not p.is_auto_saving()
        assert storage.listener is None

    asyncio.run(main())


def test_schedule_runs_actions_in_order_across_persisters_sharing_an_id() -> None:
    async def main() -> None:
        order: list[str] = []

        def action(name: str, delay: float) -> Any:
            async def run() -> None:
                order.append(name + "+")
                await asyncio.sleep(delay)
                order.append(name + "-")

            return run

        s1, s2 = Storage(), Storage()
        p1 = persister_for(create_mergeable_store(), s1, schedule_id="db")
        p2 = persister_for(create_mergeable_store(), s2, schedule_id="db")
        await asyncio.gather(
            p1.schedule(action("a", 0.01), action("b", 0)),
            p2.schedule(action("c", 0)),
        )
        assert order == ["a+", "a-", "b+", "b-", "c+", "c-"]
        await p1.destroy()
        await p2.destroy()

    asyncio.run(main())


def test_failing_hook_is_reported_or_logged_never_raised(caplog: Any) -> None:
    async def main() -> None:
        store = create_mergeable_store()

        def broken(*_: Any) -> Any:
            raise OSError("disk on fire")

        errors: list[BaseException] = []
        p = create_custom_persister(
            store, broken, broken, lambda _l: None, lambda _h: None, errors.append
        )
        await p.load()
        await p.save()
        assert [str(e) for e in errors] == ["disk on fire", "disk on fire"]
        assert p.get_status() == Status.IDLE
        quiet = create_custom_persister(store, broken, broken, lambda _l: None, lambda _h: None)
        with caplog.at_level(logging.WARNING, logger="localsync.sync.persister"):
            await quiet.save()
        assert "disk on fire" in caplog.text
        await p.destroy()
        await quiet.destroy()

    asyncio.run(main())


def test_mergeable_only_persister_rejects_a_plain_store() -> None:
    from localsync import create_store
    from localsync.sync.persister import Persists

    with pytest.raises(TypeError, match="tinybase:0"):
        create_custom_persister(
            create_store(),
            lambda: None,
            lambda *_: None,
            lambda _l: None,
            lambda _h: None,
            persist=Persists.MERGEABLE_STORE_ONLY,
        )


def test_plain_store_round_trip_and_auto_save() -> None:
    """TinyBase persisters take plain Stores too: content is [tables, values]."""
    from localsync import create_store

    async def main() -> None:
        storage = Storage()
        a = create_store()
        a.set_tables({"t": {"r": {"c": 1, "o": {"k": [1]}}}}).set_values({"v": "x"})
        pa = persister_for(a, storage)
        await pa.start_auto_save()
        assert storage.content == a.get_encoded_content()
        a.set_cell("t", "r", "c", 2)
        await asyncio.sleep(0.01)
        assert storage.writes[-1][1] is not None and storage.writes[-1][1][-1] == 1
        b = create_store()
        pb = persister_for(b, storage)
        await pb.load()
        assert b.get_tables() == a.get_tables() and b.get_values() == a.get_values()
        await pa.destroy()
        await pb.destroy()

    asyncio.run(main())


def test_saves_stay_in_transaction_order_when_some_are_queued() -> None:
    async def main() -> None:
        store = create_mergeable_store()
        sent: list[Any] = []

        def set_persisted(get_content: Any, changes: Any = None) -> None:
            sent.append(changes and next(iter(changes[1][0])))

        p = create_custom_persister(
            store, lambda: None, set_persisted, lambda _l: 1, lambda _h: None
        )
        await p.start_auto_save()

        def write_while_saving(_p: Any, status: int) -> None:
            if status == Status.SAVING and not store.has_value("second"):
                store.set_value("second", 2)  # cannot be saved inline now: it is queued

        store.set_value("first", 1)
        p.add_status_listener(write_while_saving)
        await p.save()  # a full save, during which "second" is written
        store.set_value("third", 3)  # inline is possible again, but must not overtake "second"
        await asyncio.sleep(0.01)
        assert [s for s in sent if s] == ["first", "second", "third"]
        await p.destroy()

    asyncio.run(main())


def test_a_plain_hook_returning_an_awaitable_never_overlaps_the_next_save() -> None:
    """A hook written as a plain function that returns a coroutine is still one save at a time,
    in transaction order, and the status says SAVING until it has finished."""

    async def main() -> None:
        store = create_mergeable_store()
        running = 0
        most = 0
        order: list[Any] = []
        statuses: list[int] = []

        async def write(changes: Any) -> None:
            nonlocal running, most
            running += 1
            most = max(most, running)
            await asyncio.sleep(0.01)  # a slow disk
            order.append(changes and next(iter(changes[1][0])))
            running -= 1

        def set_persisted(get_content: Any, changes: Any = None) -> Any:
            return write(changes)  # not a coroutine function, but returns an awaitable

        p = create_custom_persister(
            store, lambda: None, set_persisted, lambda _l: 1, lambda _h: None
        )
        await p.start_auto_save()
        p.add_status_listener(lambda _p, status: statuses.append(status))
        store.set_value("first", 1)
        assert p.get_status() == Status.SAVING  # the write is still in flight
        store.set_value("second", 2)
        store.set_value("third", 3)
        for _ in range(200):
            if len([o for o in order if o]) == 3 and p.get_status() == Status.IDLE:
                break
            await asyncio.sleep(0.01)
        assert most == 1
        assert [o for o in order if o] == ["first", "second", "third"]
        assert statuses[-1] == Status.IDLE
        await p.destroy()

    asyncio.run(main())


# -- parity with TinyBase's own createCustomPersister --------------------------------------------

TINYBASE_SCENARIO = r"""
import {createMergeableStore} from 'tinybase';
import {createCustomPersister} from 'tinybase/persisters';
const U = '\uFFFC';
const settle = () => new Promise((r) => setTimeout(r, 10));
const encoded = (s) => JSON.parse(
  JSON.stringify(s.getMergeableContent(), (k, v) => (v === undefined ? U : v)));
const record = [];
let storage;
let listener;
const writes = [];
const source = createMergeableStore('source', () => 1700000000000);
const store = createMergeableStore('store', () => 1700000000001);
const p = createCustomPersister(
  store,
  async () => storage,
  async (getContent, changes) => {
    storage = getContent();
    writes.push(changes ? 'changes' : 'full');
  },
  (l) => { listener = l; return 'h'; },
  () => { listener = undefined; },
  (e) => record.push(['error', String(e)]),
  3,
);
const statuses = [];
p.addStatusListener((_, s) => statuses.push(s));
const snap = (label) => record.push([label, statuses.splice(0), writes.splice(0), p.getStats(),
  store.getTables(), p.isAutoLoading(), p.isAutoSaving()]);
await p.load([{t: {r: {c: 'default'}}}, {}]); await settle(); snap('load-nothing');
await p.save(); await settle(); snap('save');
source.setCell('t', 'r', 'c', 'from source');
storage = encoded(source);
await p.load(); await settle(); snap('load');
await p.startAutoSave(); await settle(); snap('startAutoSave');
store.setCell('t', 'r', 'd', 1); await settle(); snap('write');
store.setCell('t', 'r', 'd', 1); await settle(); snap('no-op write');
await p.startAutoLoad(); await settle(); snap('startAutoLoad');
source.setCell('t', 'r', 'e', 2);
await listener(encoded(source)); await settle(); snap('pushed content');
source.setCell('t', 'r', 'f', 3);
storage = encoded(source);
await listener(); await settle(); snap('pushed nothing');
await p.stopAutoPersisting(); await settle(); snap('stop');
store.setCell('t', 'r', 'g', 4); await settle(); snap('write stopped');
await p.destroy(); snap('destroy');
process.stdout.write(JSON.stringify(record) + '\n');
"""


async def python_scenario() -> list[Any]:
    record: list[Any] = []
    state: dict[str, Any] = {"storage": None, "listener": None}
    writes: list[str] = []
    source = create_mergeable_store("source", get_now=lambda: 1700000000000)
    store = create_mergeable_store("store", get_now=lambda: 1700000000001)

    async def get_persisted() -> Any:
        return state["storage"]

    async def set_persisted(get_content: Any, changes: Any = None) -> None:
        state["storage"] = get_content()
        writes.append("changes" if changes else "full")

    def add(listener: Any) -> str:
        state["listener"] = listener
        return "h"

    p = create_custom_persister(
        store,
        get_persisted,
        set_persisted,
        add,
        lambda _h: state.update(listener=None),
        lambda e: record.append(["error", str(e)]),
        3,
    )
    statuses: list[int] = []
    p.add_status_listener(lambda _p, s: statuses.append(s))

    async def snap(label: str) -> None:
        await asyncio.sleep(0.01)
        record.append(
            [
                label,
                statuses[:],
                writes[:],
                # (TinyBase's getStats: loads and saves; the failure and lag extras are ours)
                {k: v for k, v in p.get_stats().items() if k in ("loads", "saves")},
                store.get_tables(),
                p.is_auto_loading(),
                p.is_auto_saving(),
            ]
        )
        statuses.clear()
        writes.clear()

    await p.load([{"t": {"r": {"c": "default"}}}, {}])
    await snap("load-nothing")
    await p.save()
    await snap("save")
    source.set_cell("t", "r", "c", "from source")
    state["storage"] = source.get_encoded_mergeable_content()
    await p.load()
    await snap("load")
    await p.start_auto_save()
    await snap("startAutoSave")
    store.set_cell("t", "r", "d", 1)
    await snap("write")
    store.set_cell("t", "r", "d", 1)
    await snap("no-op write")
    await p.start_auto_load()
    await snap("startAutoLoad")
    source.set_cell("t", "r", "e", 2)
    state["listener"](source.get_encoded_mergeable_content())
    await snap("pushed content")
    source.set_cell("t", "r", "f", 3)
    state["storage"] = source.get_encoded_mergeable_content()
    state["listener"]()
    await snap("pushed nothing")
    await p.stop_auto_persisting()
    await snap("stop")
    store.set_cell("t", "r", "g", 4)
    await snap("write stopped")
    await p.destroy()
    await snap("destroy")
    return record


@pytest.mark.interop
def test_lifecycle_matches_tinybase_create_custom_persister(tmp_path: Any) -> None:
    """Statuses, stats, kinds of writes and contents after each step, as TinyBase 10.0.1."""
    import json
    import subprocess

    from tests.npm_env import ensure_tinybase, require_node

    require_node()
    (tmp_path / "node_modules").symlink_to(ensure_tinybase() / "node_modules")
    script = tmp_path / "scenario.mjs"
    script.write_text(TINYBASE_SCENARIO, "utf-8")
    done = subprocess.run(
        ["node", str(script)], capture_output=True, text=True, timeout=60, check=True
    )
    expected = json.loads(done.stdout.strip().splitlines()[-1])
    got = asyncio.run(python_scenario())
    assert [step[0] for step in got] == [step[0] for step in expected]
    for ours, theirs in zip(got, expected, strict=True):
        assert ours == theirs, ours[0]


def test_a_persister_through_the_blocking_facade() -> None:
    from localsync.sync.blocking import BlockingSynchronizer

    storage = Storage()
    store = create_mergeable_store()
    with BlockingSynchronizer(persister_for, store, storage, start=False, timeout=10) as p:
        store.set_value("before", 1)
        p.start_auto_save()  # a plain blocking call
        assert p.is_auto_saving()
        store.set_value("after", 2)  # written on this thread, saved on the loop thread
        assert p.call(lambda: None) is None  # a round trip: the hand-over has been processed
        assert p.schedule(lambda: None) is p.synchronizer  # any coroutine method, blocking
        assert storage.content == store.get_encoded_mergeable_content()
        assert p.get_stats()["saves"] >= 2
    assert storage.listener is None and not p.synchronizer.is_auto_saving()
