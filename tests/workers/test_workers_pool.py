"""Supervision of real worker processes: results, failures, restarts, stops.

Worker functions live at module level (pickled by reference, imported by the spawned child)
except where a test checks that closures and lambdas travel too.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from workers import WorkerContext, WorkerPool, WorkersFailed, run_workers

pytestmark = [pytest.mark.process, pytest.mark.timeout(60)]


def times_ten(ctx: WorkerContext, factor: int) -> dict:
    return {
        "index": ctx.index,
        "attempt": ctx.attempt,
        "count": ctx.count,
        "value": ctx.index * factor,
    }


def fail_first_attempts(ctx: WorkerContext, log: str, failures: int) -> int:
    """Record when each attempt starts and fails, fail ``failures`` times, then succeed."""
    with open(log, "a") as f:
        f.write(json.dumps({"event": "start", "attempt": ctx.attempt, "t": time.time()}) + "\n")
    if ctx.attempt <= failures:
        with open(log, "a") as f:
            f.write(json.dumps({"event": "fail", "attempt": ctx.attempt, "t": time.time()}) + "\n")
        raise ValueError(f"boom on attempt {ctx.attempt}")
    return ctx.attempt


def always_fails(ctx: WorkerContext) -> None:
    raise RuntimeError(f"worker {ctx.index} is broken")


def run_until_stopped(ctx: WorkerContext, marker_dir: str) -> str:
    while ctx.sleep(0.02):
        pass
    Path(marker_dir, f"stopped-{ctx.index}-{ctx.attempt}").write_text("clean")
    return "stopped"


def ignore_stop_requests(ctx: WorkerContext) -> None:
    while True:
        time.sleep(0.05)


def unpicklable_result(ctx: WorkerContext) -> object:
    return (x for x in range(3))  # a generator cannot be pickled back to the parent


def fail_after_a_healthy_run(ctx: WorkerContext, successes_at: int) -> int:
    if ctx.attempt < successes_at:
        time.sleep(0.4)  # longer than the pool's healthy_after
        raise RuntimeError("late failure")
    return ctx.attempt


def exit_with(ctx: WorkerContext, how: str) -> None:
    if how == "os._exit":
        os._exit(3)
    sys.exit(7)


def test_workers_return_results_and_exit_zero_without_restart() -> None:
    with WorkerPool(times_ten, count=3, args=(10,)) as pool:
        assert pool.join(30)
    assert pool.exit_codes == [0, 0, 0]
    assert pool.errors == []
    assert [r["value"] for r in pool.results] == [0, 10, 20]
    assert {r["count"] for r in pool.results} == {3}
    assert all(info.state == "finished" and info.attempt == 1 for info in pool.workers)


@pytest.mark.parametrize("method", ["fork", "forkserver"])
def test_other_start_methods_work_too(method: str) -> None:
    assert run_workers(times_ten, 2, args=(3,), start_method=method, timeout=30) == [
        {"index": 0, "attempt": 1, "count": 2, "value": 0},
        {"index": 1, "attempt": 1, "count": 2, "value": 3},
    ]


def test_closures_and_lambdas_travel_to_spawned_workers() -> None:
    offset = 1000

    def nested(ctx: WorkerContext) -> int:
        return offset + ctx.index

    assert run_workers(nested, 2, timeout=30) == [1000, 1001]
    assert run_workers(lambda ctx: (ctx.index, offset), 1, timeout=30) == [(0, 1000)]


def test_an_exception_is_collected_with_traceback_and_the_worker_restarted_after_backoff(
    tmp_path: Path,
) -> None:
    log = tmp_path / "log.jsonl"
    with WorkerPool(fail_first_attempts, count=1, args=(str(log), 2), backoff=(0.2, 10.0)) as pool:
        assert pool.join(30)
    info = pool.workers[0]
    assert (info.state, info.attempt, info.restarts) == ("finished", 3, 2)
    assert info.exit_codes == (1, 1, 0)
    assert pool.results == [3]
    assert [(e.index, e.attempt, e.kind, e.exit_code) for e in pool.errors] == [
        (0, 1, "exception", 1),
        (0, 2, "exception", 1),
    ]
    for error in pool.errors:
        assert "Traceback (most recent call last)" in error.traceback
        assert f"ValueError: boom on attempt {error.attempt}" in error.traceback
        assert "fail_first_attempts" in error.traceback
    # each restart began no sooner than its backoff delay after the failure (0.2 s, then 0.4 s)
    events = [json.loads(line) for line in log.read_text().splitlines()]
    fails = {e["attempt"]: e["t"] for e in events if e["event"] == "fail"}
    starts = {e["attempt"]: e["t"] for e in events if e["event"] == "start"}
    assert starts[2] - fails[1] >= 0.2 - 0.005
    assert starts[3] - fails[2] >= 0.4 - 0.005


def test_sigkill_of_a_worker_restarts_it_and_a_stop_is_clean(tmp_path: Path) -> None:
    pool = WorkerPool(run_until_stopped, count=2, args=(str(tmp_path),), backoff=(0.05, 1.0))
    with pool:
        assert pool.wait_running(30)
        killed_pid = pool.pids[1]
        assert pool.kill(1, signal.SIGKILL)
        assert pool.wait_for(
            lambda p: p.workers[1].attempt == 2 and p.workers[1].state == "running", 30
        )
        assert pool.pids[1] != killed_pid
        assert pool.workers[0].attempt == 1  # the other worker was left alone
        assert pool.stop(grace=10)
    assert [e.kind for e in pool.errors] == ["signal"]
    assert pool.errors[0].exit_code == -signal.SIGKILL
    assert pool.errors[0].pid == killed_pid
    assert [info.exit_codes for info in pool.workers] == [(0,), (-signal.SIGKILL, 0)]
    assert [info.state for info in pool.workers] == ["stopped", "stopped"]
    assert pool.results == ["stopped", "stopped"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stopped-0-1", "stopped-1-2"]


def test_a_worker_that_keeps_crashing_gives_up_after_max_restarts() -> None:
    pool = WorkerPool(always_fails, count=2, max_restarts=2, backoff=(0.01, 0.02))
    with pool:
        assert pool.join(30)
    assert pool.failed == [0, 1]
    assert all(info.attempt == 3 and info.restarts == 2 for info in pool.workers)
    assert len(pool.errors) == 6
    assert {(e.index, e.attempt) for e in pool.errors} == {
        (i, a) for i in (0, 1) for a in (1, 2, 3)
    }
    with pytest.raises(WorkersFailed) as raised:
        pool.raise_for_failures()
    assert raised.value.failed == [0, 1]
    assert "is broken" in str(raised.value)
    with pytest.raises(WorkersFailed):
        run_workers(always_fails, 1, max_restarts=0, timeout=30)


def test_exit_codes_without_exceptions_are_failures_too() -> None:
    with WorkerPool(exit_with, count=1, args=("os._exit",), restart="never") as pool:
        assert pool.join(30)
    assert pool.exit_codes == [3]
    assert pool.failed == [0]
    assert [(e.kind, e.exit_code) for e in pool.errors] == [("exit", 3)]

    with WorkerPool(exit_with, count=1, args=("sys.exit",), restart="never") as pool:
        assert pool.join(30)
    assert pool.exit_codes == [7]
    assert [(e.kind, e.exit_code, e.traceback) for e in pool.errors] == [
        ("exit", 7, "SystemExit(7)")
    ]


def test_a_worker_ignoring_sigterm_is_killed_after_the_grace_period() -> None:
    pool = WorkerPool(ignore_stop_requests, count=1)
    with pool:
        assert pool.wait_running(30)
        assert pool.stop(grace=0.3)
    assert pool.exit_codes == [-signal.SIGKILL]
    assert pool.workers[0].state == "stopped"
    assert pool.errors == []  # a kill the pool asked for is not a worker failure


def test_an_external_sigterm_is_a_clean_finish_not_a_crash(tmp_path: Path) -> None:
    pool = WorkerPool(run_until_stopped, count=1, args=(str(tmp_path),))
    with pool:
        assert pool.wait_running(30)
        os.kill(pool.pids[0], signal.SIGTERM)
        assert pool.join(30)
    assert pool.workers[0].state == "finished"
    assert pool.exit_codes == [0]
    assert pool.errors == []


def test_run_workers_times_out_and_stops_the_pool(tmp_path: Path) -> None:
    with pytest.raises(TimeoutError):
        run_workers(run_until_stopped, 1, args=(str(tmp_path),), timeout=0.5)
    # the worker was stopped through its cooperative path (it may not have been started yet)
    assert [p.name for p in tmp_path.iterdir()] in ([], ["stopped-0-1"])


def test_workers_die_with_the_pool_process(tmp_path: Path) -> None:
    """A SIGKILLed parent leaves no orphan workers behind (Linux parent-death signal)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("parent-death signal is Linux-only")
    pid_file = tmp_path / "pids"
    script = textwrap.dedent(
        f"""
        import os, sys, time
        sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
        from workers import WorkerPool

        def work(ctx, pid_file):
            with open(pid_file, "a") as f:
                f.write(f"{{os.getpid()}}\\n")
            while ctx.sleep(0.02):
                pass

        if __name__ == "__main__":
            pool = WorkerPool(work, 2, args=({str(pid_file)!r},)).start()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and (
                not os.path.exists({str(pid_file)!r})
                or len(open({str(pid_file)!r}).read().split()) < 2
            ):
                time.sleep(0.02)
            print("ready", flush=True)
            time.sleep(60)
        """
    )
    (tmp_path / "parent.py").write_text(script)
    parent = subprocess.Popen(
        [sys.executable, str(tmp_path / "parent.py")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        assert parent.stdout.readline().strip() == "ready"
        pids = [int(x) for x in pid_file.read_text().split()]
        assert len(pids) == 2
        parent.kill()
        parent.wait(10)
        deadline = time.monotonic() + 20
        alive = pids
        while alive and time.monotonic() < deadline:
            alive = [pid for pid in pids if _alive(pid)]
            time.sleep(0.05)
        assert alive == []
    finally:
        parent.kill()
        parent.wait(10)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (reparented to init, not yet reaped) counts as gone
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_result_that_cannot_be_sent_back_is_reported_but_the_work_counts_as_done() -> None:
    with WorkerPool(unpicklable_result, 1) as pool:
        assert pool.join(30)
    assert pool.workers[0].state == "finished"
    assert pool.exit_codes == [0]
    assert pool.results == [None]
    assert [(e.kind, e.exit_code) for e in pool.errors] == [("exception", 0)]
    assert "generator" in pool.errors[0].traceback


def test_a_long_healthy_run_clears_the_failure_streak() -> None:
    """max_restarts=1 would give up at attempt 2, but each attempt ran past healthy_after."""
    with WorkerPool(
        fail_after_a_healthy_run,
        1,
        args=(4,),
        max_restarts=1,
        healthy_after=0.3,
        backoff=(0.01, 0.01),
    ) as pool:
        assert pool.join(30)
    assert pool.workers[0].state == "finished"
    assert pool.results == [4]
    assert pool.workers[0].exit_codes == (1, 1, 1, 0)

    with WorkerPool(
        fail_after_a_healthy_run,
        1,
        args=(4,),
        max_restarts=1,
        healthy_after=None,
        backoff=(0.01, 0.01),
    ) as pool:
        assert pool.join(30)
    assert pool.failed == [0]
    assert pool.workers[0].exit_codes == (1, 1)
