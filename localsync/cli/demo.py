"""``localsync demo``: worker processes sharing one store, persisted by a coordinator.

What it shows, end to end, on a machine with nothing else running:

1. the data file of earlier runs is read from disk first (``--data``, default
   ``./localsync-data``), so a second run can say what survived the first;
2. a coordinator process (``localsync coordinator``) joins the channel and persists it;
3. ``--workers`` processes (the :mod:`workers` library) each insert orders into the shared
   ``orders`` table and read everybody's rows back from their own synchronized copy; a status
   row per worker (in table ``workers``) is what the live display reads;
4. this process joins the channel too, as an observer: it renders progress from its own
   synchronized store and ends a ``--seconds`` run by writing ``stop_run`` into the store,
   which the workers see through the channel and finish normally;
5. workers flush with ``"acknowledged"``: they exit only once the coordinator has durably
   saved everything they hold; the coordinator is stopped (SIGTERM: final save), and the
   result is printed from the file on disk, reloaded into a fresh store.

The channel is private to the data folder: its sockets and locks live in a runtime folder of
their own, ``<runtime folder>/demo-<16 hex digits of BLAKE2b(resolved data folder)>`` (see
:mod:`localsync.channel.runtime` for the runtime folder), so two demos with different data folders
never see each other's data, whatever ``--channel`` says. A demo whose data folder is in use by
another demo's coordinator waits up to 10 s for it to finish, then refuses (one line, exit
status 2): see "One coordinator per channel" in :mod:`localsync.channel.coordinator`.

Stopping: Ctrl-C, SIGTERM and SIGHUP all end a run the same way (workers stopped, the
coordinator saves a last time, the result is printed; exit status 128 + the signal's number).
A demo that is killed outright (SIGKILL) leaves nothing running either: the workers and the
coordinator (started with ``--exit-with-parent``) notice that their parent is gone, and the
coordinator saves before it exits. Every numeric option is checked first: a wrong value is one
line on stderr (``localsync demo: error: ...``) and exit status 2, before anything starts.

``--chaos`` SIGKILLs worker 0 mid-run: the pool restarts it after a short backoff, and the new
attempt resumes from the rows its previous attempt had already shared (rows are keyed
``r<run>-w<worker>-<n>`` and their content derives from the key, so rewriting one is harmless).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from localsync.core.store import Store

ORDERS = "orders"
STATUS = "workers"
CUSTOMERS = ("ada", "bob", "chen", "dara", "eve", "femi", "gus", "hana")
ITEMS = ("apples", "bread", "cheese", "dates", "eggs", "figs", "grapes")
BATCH = 10  # orders per transaction: one ContentDiff message per batch
MAX_WORKERS = 256  # a sanity bound: each worker is a process

# what each process's synchronizer ignored (e.g. "tinybase:3", a request that timed out
# because the peer asked had just left): counted and summed up at the end instead of being
# logged as alarming-looking warnings in the middle of the live table
IGNORED: Counter[str] = Counter()


def count_ignored(error: BaseException) -> None:
    IGNORED[str(getattr(error, "code", type(error).__name__))] += 1


# -- the worker side (runs in each worker process) ---------------------------------------------


def order_for(row_id: str, run: int, worker: int) -> dict[str, Any]:
    """The order stored under ``row_id``: derived from the id, so a rewrite changes nothing."""
    rng = random.Random(row_id)
    qty = rng.randint(1, 9)
    return {
        "run": run,
        "worker": worker,
        "customer": rng.choice(CUSTOMERS),
        "item": rng.choice(ITEMS),
        "qty": qty,
        "total": round(qty * rng.uniform(0.5, 4.0), 2),
    }


def demo_worker(ctx: Any, run: int, rows: int | None, rate: float) -> dict[str, Any]:
    """Insert orders until ``rows`` are written or the observer sets ``stop_run`` to ``run``."""
    store = ctx.store
    prefix = f"r{run}-w{ctx.index}-"
    status_id = f"r{run}-w{ctx.index}"

    def own_rows() -> int:
        return sum(1 for row_id in store.get_row_ids(ORDERS) if row_id.startswith(prefix))

    # a restarted attempt continues after the rows its predecessors already shared
    written = own_rows()
    resumed_from = written

    def report(done: bool) -> None:
        ids = store.get_row_ids(ORDERS)
        this_run = [row_id for row_id in ids if row_id.startswith(f"r{run}-")]
        store.set_row(
            STATUS,
            status_id,
            {
                "run": run,
                "worker": ctx.index,
                "attempt": ctx.attempt,
                "pid": os.getpid(),
                "written": written,
                "sees": len(ids),
                "sees_others": sum(1 for row_id in this_run if not row_id.startswith(prefix)),
                "done": done,
            },
        )

    next_report = 0.0
    while not ctx.stopping and store.get_value("stop_run") != run:
        if rows is not None and written >= rows:
            break
        batch = BATCH if rows is None else min(BATCH, rows - written)
        with store.transaction():
            for _ in range(batch):
                row_id = f"{prefix}{written:06d}"
                store.set_row(ORDERS, row_id, order_for(row_id, run, ctx.index))
                written += 1
        now = time.monotonic()
        if now >= next_report:
            report(done=False)
            next_report = now + 0.2
        if rate > 0 and not ctx.sleep(batch / rate):
            break
    written = own_rows()
    report(done=True)
    ctx.flush(10.0)  # the synchronizer's last ignored errors happen before the final flush
    return {
        "written": written,
        "resumed_from": resumed_from,
        "attempt": ctx.attempt,
        "ignored": dict(IGNORED),
    }


# -- reading the persisted result -------------------------------------------------------------


def load_persisted(path: Path, persister: str) -> Any:
    """A fresh store holding exactly what is on disk (``None`` if there is no file yet)."""
    from localsync.core.mergeable_store import create_mergeable_store
    from localsync.sync import event_loop

    if not path.exists():
        return None
    store = create_mergeable_store()
    saved: Any
    if persister == "sqlite":
        from localsync.persisters.sqlite import create_sqlite_persister

        saved = create_sqlite_persister(store, str(path))
    else:
        from localsync.persisters.file import create_file_persister

        saved = create_file_persister(store, str(path))

    async def load() -> None:
        await saved.load()
        destroy = getattr(saved, "destroy", None)
        if destroy is not None:
            await destroy()

    event_loop.run(load())
    return store


def summarize(store: Store | None) -> dict[str, Any]:
    """Orders per run and per worker, as the file holds them."""
    if store is None:
        return {"runs": 0, "orders": 0, "per_run": {}, "row_ids": set()}
    per_run: dict[int, Counter[int]] = {}
    row_ids = set(store.get_row_ids(ORDERS))
    for row_id in row_ids:
        row = store.get_row(ORDERS, row_id)
        per_run.setdefault(int(row.get("run", 0)), Counter())[int(row.get("worker", -1))] += 1
    runs = store.get_value("runs")
    return {
        "runs": int(runs) if isinstance(runs, int | float) else 0,
        "orders": len(row_ids),
        "per_run": {run: dict(sorted(c.items())) for run, c in sorted(per_run.items())},
        "row_ids": row_ids,
    }


# -- the coordinator process --------------------------------------------------------------------


def _package_env() -> dict[str, str]:
    """Environment in which ``python -m localsync.cli`` finds this very package."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


class CoordinatorProcess:
    """``localsync coordinator`` as a child process, started and stopped by the demo.

    Its stderr goes to a temporary file that is shown only if it fails: the expected noise of
    a lone first participant (a request nobody answers yet) would otherwise clutter the demo.
    """

    def __init__(self, channel: str, data_dir: Path, persister: str, runtime_dir: Path) -> None:
        command = [sys.executable, "-m", "localsync.cli", "coordinator", "--channel", channel]
        command += ["--data", str(data_dir), "--persister", persister]
        # --exit-with-parent: a demo that is SIGKILLed does not leave its coordinator behind
        command += ["--runtime-dir", str(runtime_dir), "--exit-with-parent"]
        self._log = tempfile.TemporaryFile("w+")  # noqa: SIM115 - lives as long as the child
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=_package_env(),
            start_new_session=True,  # Ctrl-C reaches the demo, which stops it after the workers
        )
        try:
            ready: list[str] = []
            stdout = self.process.stdout
            reader = threading.Thread(
                target=lambda: ready.append(stdout.readline() if stdout else ""), daemon=True
            )
            reader.start()
            reader.join(30.0)
            line = ready[0] if ready else ""
            try:
                event = json.loads(line) if line else {}
            except json.JSONDecodeError:
                event = {}
        except BaseException:  # interrupted while waiting: do not leave the child behind
            self.stop(5.0)
            raise
        if event.get("event") != "ready":
            code = self.stop(5.0)
            log = self.log().strip()
            if code == 2 and log:  # a refusal ("localsync coordinator: error: ..."): its line
                reason = log.splitlines()[-1].removeprefix("localsync coordinator: error: ")
                raise RuntimeError(f"the coordinator refused to start: {reason}")
            raise RuntimeError(f"the coordinator did not start (exit {code}):\n{log}")

    def log(self) -> str:
        with contextlib.suppress(OSError, ValueError):
            self._log.seek(0)
            return str(self._log.read())
        return ""

    def stop(self, timeout: float) -> int:
        """SIGTERM (the coordinator saves a last time and exits 0), SIGKILL if it hangs."""
        process = self.process
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5.0)
        if process.stdout is not None:
            process.stdout.close()
        return int(process.returncode)


# -- the live display ---------------------------------------------------------------------------


class Display:
    """A small table redrawn in place on a terminal; plain lines, once a second, otherwise."""

    def __init__(self, stream: IO[str], live: bool) -> None:
        self.stream = stream
        self.live = live
        self._drawn = 0
        self._last_plain = 0.0

    def show(self, lines: list[str], plain: str, force: bool = False) -> None:
        if self.live:
            out = [f"\x1b[{self._drawn}F"] if self._drawn else []
            out += [f"\x1b[2K{line}\n" for line in lines]
            self.stream.write("".join(out))
            self.stream.flush()
            self._drawn = len(lines)
        elif force or time.monotonic() - self._last_plain >= 1.0:
            self._last_plain = time.monotonic()
            print(plain, file=self.stream, flush=True)


def progress_lines(
    run: int, started: float, writing_since: float | None, store: Store, infos: list[Any]
) -> tuple[list[str], str]:
    statuses = {}
    for row_id in store.get_row_ids(STATUS):
        row = store.get_row(STATUS, row_id)
        if row.get("run") == run:
            statuses[int(row.get("worker", -1))] = row
    ids = store.get_row_ids(ORDERS)
    this_run = sum(1 for row_id in ids if row_id.startswith(f"r{run}-"))
    now = time.monotonic()
    elapsed = now - started
    writing = now - (writing_since or now)
    rate = f", {this_run / writing:,.0f}/s" if writing > 0.5 else ""
    head = (
        f"run {run}  {elapsed:5.1f} s  shared table: {len(ids):,} orders "
        f"({this_run:,} this run{rate})"
    )
    lines = [head, "  worker  state     attempt  written  sees (all runs)  from others"]
    plain_parts = []
    for info in infos:
        row = statuses.get(info.index, {})
        lines.append(
            f"  w{info.index:<5}  {info.state:<8}  {info.attempt:>7}  {row.get('written', 0):>7,}"
            f"  {row.get('sees', 0):>15,}  {row.get('sees_others', 0):>11,}"
        )
        plain_parts.append(f"w{info.index}={row.get('written', 0)}")
    plain = f"[{elapsed:5.1f} s] orders={len(ids)} this_run={this_run} " + " ".join(plain_parts)
    return lines, plain


def chaos_due(args: argparse.Namespace, store: Store, run: int, writing: float) -> bool:
    """Time to kill worker 0: 40% into the run (by its own progress when ``--rows`` is set)."""
    if args.rows is None:
        return writing >= args.seconds * 0.4
    row = store.get_row(STATUS, f"r{run}-w0")
    return int(row.get("written", 0)) >= args.rows * 0.4 and not row.get("done")


# -- the command --------------------------------------------------------------------------------


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, default=4, help="worker processes (default 4)")
    amount = parser.add_mutually_exclusive_group()
    amount.add_argument(
        "--seconds", type=float, default=3.0, help="how long the workers write (default 3)"
    )
    amount.add_argument("--rows", type=int, help="orders per worker instead of a duration")
    parser.add_argument(
        "--rate", type=float, default=200.0, help="orders/s per worker, 0 = no limit (200)"
    )
    parser.add_argument(
        "--data", default="localsync-data", metavar="DIR", help="data folder (./localsync-data)"
    )
    parser.add_argument(
        "--channel",
        default="localsync-demo",
        help="channel name (default localsync-demo); private to the data folder",
    )
    parser.add_argument(
        "--persister",
        choices=("sqlite", "file"),
        default="sqlite",
        help="how the coordinator stores the data (default sqlite)",
    )
    parser.add_argument(
        "--chaos", action="store_true", help="SIGKILL worker 0 mid-run (it is restarted)"
    )
    parser.add_argument("--json", action="store_true", help="end with a JSON summary line")
    parser.add_argument(
        "--plain", action="store_true", help="progress as plain lines even on a terminal"
    )


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse a wrong value (:class:`localsync.cli.UsageError`) before anything starts."""
    from localsync.channel.runtime import validate_channel_name
    from localsync.cli.main import UsageError

    if not 1 <= args.workers <= MAX_WORKERS:
        raise UsageError(f"--workers must be in 1..{MAX_WORKERS}, got {args.workers}")
    if not (math.isfinite(args.seconds) and args.seconds > 0):
        raise UsageError(f"--seconds must be a number > 0, got {args.seconds:g}")
    if args.rows is not None and args.rows < 1:
        raise UsageError(f"--rows must be >= 1, got {args.rows}")
    if not (math.isfinite(args.rate) and args.rate >= 0):
        raise UsageError(f"--rate must be a number >= 0 (0: no limit), got {args.rate:g}")
    try:
        validate_channel_name(args.channel)
    except (TypeError, ValueError) as error:
        raise UsageError(f"--channel: {error}") from None
    data = Path(args.data)
    if data.exists() and not data.is_dir():
        raise UsageError(f"--data {args.data}: not a folder")


def demo_runtime_dir(data_dir: Path) -> Path:
    """The private runtime folder of the demo whose (resolved) data folder is ``data_dir``."""
    from localsync.channel.runtime import resolve_runtime_dir

    digest = hashlib.blake2b(os.fsencode(data_dir), digest_size=8).hexdigest()
    return resolve_runtime_dir(resolve_runtime_dir() / f"demo-{digest}")


STOP_SIGNALS: dict[int, str] = {
    signal.SIGINT: "interrupted",
    signal.SIGTERM: "terminated",
    signal.SIGHUP: "hangup",
}


@contextlib.contextmanager
def stop_signals(received: list[int]) -> Iterator[None]:
    """SIGTERM and SIGHUP end the run as Ctrl-C does: KeyboardInterrupt, appended to
    ``received``. Once stopping, SIGTERM and SIGHUP are ignored so the clean-up can finish; a
    second Ctrl-C still breaks off (the children notice the demo's end by themselves)."""

    def handler(signum: int, _frame: object) -> None:
        if received and signum != signal.SIGINT:
            return
        received.append(signum)
        raise KeyboardInterrupt

    previous: dict[int, Any] = {}
    for signum in STOP_SIGNALS:
        with contextlib.suppress(ValueError, OSError):  # not the main thread: leave them be
            previous[signum] = signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def _stopped_by(received: list[int]) -> tuple[str, int]:
    """What to print and the exit status (128 + signal number) of a run ended by a signal."""
    signum = received[0] if received else int(signal.SIGINT)
    return STOP_SIGNALS.get(signum, "interrupted"), 128 + signum


def run(args: argparse.Namespace) -> int:
    from localsync.cli.main import UsageError

    check_arguments(args)
    from localsync.channel.coordinator import OWNER_WAIT_SECONDS, channel_owner, data_file
    from localsync.channel.runtime import RuntimeDirError

    data_dir = Path(args.data).resolve()
    try:
        runtime_dir = demo_runtime_dir(data_dir)
        channel_owner(args.channel, runtime_dir)  # checks the socket paths' length too
    except RuntimeDirError as error:
        print(f"localsync demo: {error}", file=sys.stderr)
        return 1
    except ValueError as error:
        raise UsageError(str(error)) from None
    received: list[int] = []
    with stop_signals(received):
        try:
            # a demo of this data folder still running (or a killed one's coordinator still
            # saving): wait for it, so that what is read below is what it saved
            deadline = time.monotonic() + OWNER_WAIT_SECONDS
            said = False
            while (owner := channel_owner(args.channel, runtime_dir)) is not None:
                if not said:
                    print(
                        f"waiting for the coordinator of another demo in {data_dir} "
                        f"(PID {owner.get('pid', 'unknown')}) to finish",
                        file=sys.stderr,
                        flush=True,
                    )
                    said = True
                if time.monotonic() >= deadline:
                    raise UsageError(
                        f"data folder {data_dir} is in use by another demo's coordinator "
                        f"(PID {owner.get('pid', 'unknown')}); try again once it has finished"
                    )
                time.sleep(0.1)
            return _run(args, data_dir, runtime_dir, data_file, received)
        except KeyboardInterrupt:  # before the run proper (its own handler covers the rest)
            reason, status = _stopped_by(received)
            print(f"\n{reason}", file=sys.stdout, flush=True)
            return status


def _run(
    args: argparse.Namespace,
    data_dir: Path,
    runtime_dir: Path,
    data_file: Any,
    received: list[int],
) -> int:
    from workers import WorkerPool
    from workers.link import open_link

    path = data_file(args.channel, data_dir, args.persister)
    before = summarize(load_persisted(path, args.persister))
    run_number = before["runs"] + 1
    out = sys.stdout
    print(f"localsync demo: run {run_number}, channel {args.channel!r}, data {path}", file=out)
    if before["orders"] or before["runs"]:
        print(
            f"found {before['orders']:,} orders from {before['runs']} previous run(s) on disk; "
            "this run starts from them",
            file=out,
        )
    else:
        print("no previous data: first run", file=out)
    out.flush()

    try:
        # the data folder is private (0700) from the start, as the coordinator creates it
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        coordinator = CoordinatorProcess(args.channel, data_dir, args.persister, runtime_dir)
    except (OSError, RuntimeError) as error:
        print(f"localsync demo: {error}", file=sys.stderr)
        return 1
    observer = None
    pool = None
    started = time.monotonic()
    interrupted = False
    failure = ""
    try:
        sync_options = {"on_ignored_error": count_ignored, "runtime_dir": str(runtime_dir)}
        observer = open_link(args.channel, sync_options, 15.0, "acknowledged")
        store = observer.store
        store.set_values({"runs": run_number, "stop_run": 0})
        pool = WorkerPool(
            demo_worker,
            count=args.workers,
            channel=args.channel,
            args=(run_number, args.rows, args.rate),
            channel_options=sync_options,
            flush="acknowledged",
            flush_timeout=20.0,
            backoff=(0.2, 2.0),
            max_restarts=3,
        )
        display = Display(out, live=out.isatty() and not args.plain)
        pool.start()
        pool.wait_running(30.0)
        writing_since = time.monotonic()
        chaos_done = not args.chaos
        stop_sent = False
        limit = (args.seconds if args.rows is None else 0.0) + 60.0
        while not pool.done:
            now = time.monotonic()
            if not chaos_done and chaos_due(args, store, run_number, now - writing_since):
                chaos_done = pool.kill(0, signal.SIGKILL)
            if args.rows is None and not stop_sent and now - writing_since >= args.seconds:
                store.set_value("stop_run", run_number)  # workers see it through the channel
                stop_sent = True
            if now - writing_since > limit:
                print("localsync demo: workers did not finish; stopping them", file=out)
                pool.stop()
                break
            lines, plain = progress_lines(run_number, started, writing_since, store, pool.workers)
            display.show(lines, plain)
            pool.join(0.1)
        lines, plain = progress_lines(run_number, started, writing_since, store, pool.workers)
        display.show(lines, plain, force=True)
        observer.flush(20.0)
    except KeyboardInterrupt:
        interrupted = True
        print(f"\n{_stopped_by(received)[0]}: stopping workers, saving", file=out)
        if pool is not None:
            pool.stop()
    except Exception as error:  # e.g. the channel could not be joined: say so, clean up
        failure = f"{type(error).__name__}: {error}"
        print(f"localsync demo: {failure}", file=sys.stderr)
    finally:
        if pool is not None:
            pool.stop()
        if observer is not None:
            observer.close()
        coordinator_exit = coordinator.stop(30.0)

    if coordinator_exit != 0:
        print(f"the coordinator exited with {coordinator_exit}:", file=out)
        print(coordinator.log(), file=out)
    after = summarize(load_persisted(path, args.persister))
    kept = before["row_ids"] <= after["row_ids"]
    this_run = after["per_run"].get(run_number, {})
    written = [(r or {}).get("written", 0) for r in pool.results] if pool else []
    columns = max([args.workers, *(max(w, default=-1) + 1 for w in after["per_run"].values())])
    print(f"\npersisted in {path} (reloaded from disk):", file=out)
    print(
        "  run  " + "  ".join(f"{'w' + str(i):>6}" for i in range(columns)) + "   total",
        file=out,
    )
    for run_id, per_worker in after["per_run"].items():
        cells = "  ".join(f"{per_worker.get(i, 0):>6,}" for i in range(columns))
        print(f"  {run_id:>3}  {cells}  {sum(per_worker.values()):>6,}", file=out)
    print(
        f"  all runs: {after['orders']:,} orders (every row: localsync inspect {data_dir})",
        file=out,
    )
    if before["orders"]:
        print(
            f"  the {before['orders']:,} orders of earlier runs are "
            + ("all still there" if kept else "NOT all there"),
            file=out,
        )
    restarts = [info.restarts for info in pool.workers] if pool else []
    if any(restarts):
        print(f"  restarts per worker: {restarts} (resumed where they left off)", file=out)
    for worker_error in pool.errors if pool else []:
        print(f"  {str(worker_error).splitlines()[0]}", file=out)
    ignored = Counter(IGNORED)
    for result in pool.results if pool else []:
        ignored.update((result or {}).get("ignored", {}))
    if ignored:
        kinds = ", ".join(f"{kind} x{count}" for kind, count in sorted(ignored.items()))
        print(f"  ignored by the synchronizers, as TinyBase does: {kinds}", file=out)
    ok = (
        not interrupted
        and not failure
        and kept
        and pool is not None
        and not pool.failed
        and coordinator_exit == 0
        and sum(this_run.values()) == sum(written)
    )
    if args.json:
        summary = {
            "run": run_number,
            "previous_runs": before["runs"],
            "previous_orders": before["orders"],
            "previous_orders_kept": kept,
            "orders": after["orders"],
            "orders_this_run": sum(this_run.values()),
            "written_by_workers": written,
            "exit_codes": pool.exit_codes if pool else [],
            "restarts": restarts,
            "coordinator_exit": coordinator_exit,
            "data_file": str(path),
            "ok": ok,
        }
        print(json.dumps(summary), file=out)
    out.flush()
    with contextlib.suppress(Exception):
        out.flush()
    if interrupted:
        return _stopped_by(received)[1]  # the shell's convention: 130 for Ctrl-C
    return 0 if ok else 1
