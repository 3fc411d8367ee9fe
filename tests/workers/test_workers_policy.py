"""Restart rules of the workers library, without processes."""

from __future__ import annotations

import pytest

from workers import RestartPolicy, WorkerPool


def test_backoff_doubles_from_first_delay_up_to_the_cap() -> None:
    policy = RestartPolicy(backoff=(0.1, 1.0))
    delays = [policy.delay(n) for n in range(1, 8)]
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0])
    assert policy.delay(10_000) == 1.0  # no float overflow on long streaks


def test_restart_only_on_failure_and_only_max_restarts_times() -> None:
    policy = RestartPolicy(mode="on-failure", max_restarts=2)
    assert [policy.should_restart(n) for n in (1, 2, 3)] == [True, True, False]
    never = RestartPolicy(mode="never")
    assert not never.should_restart(1)
    assert not RestartPolicy(max_restarts=0).should_restart(1)


def test_a_long_healthy_run_clears_the_failure_streak() -> None:
    policy = RestartPolicy(healthy_after=30.0)
    assert policy.resets_after(30.0)
    assert not policy.resets_after(29.9)
    assert not RestartPolicy(healthy_after=None).resets_after(1e9)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"mode": "always"}, ValueError),
        ({"max_restarts": -1}, ValueError),
        ({"max_restarts": 1.5}, TypeError),
        ({"backoff": (2.0, 1.0)}, ValueError),
        ({"backoff": (-1.0, 1.0)}, ValueError),
        ({"healthy_after": -1.0}, ValueError),
    ],
)
def test_bad_policy_is_rejected(kwargs: dict, error: type[Exception]) -> None:
    with pytest.raises(error):
        RestartPolicy(**kwargs)


def identity(ctx: object) -> object:
    return ctx


@pytest.mark.parametrize(
    ("args", "kwargs", "error"),
    [
        ((42,), {}, TypeError),
        ((identity, 0), {}, ValueError),
        ((identity, "2"), {}, TypeError),
        ((identity, True), {}, TypeError),
        ((identity, 1), {"channel": ""}, TypeError),
        ((identity, 1), {"grace": -1}, ValueError),
        ((identity, 1), {"restart": "sometimes"}, ValueError),
    ],
)
def test_bad_pool_arguments_are_rejected(args: tuple, kwargs: dict, error: type) -> None:
    with pytest.raises(error):
        WorkerPool(*args, **kwargs)


def test_unpicklable_arguments_fail_in_the_caller_not_in_the_workers() -> None:
    pool = WorkerPool(identity, 1, args=((x for x in range(3)),))
    with pytest.raises(TypeError, match="cannot be pickled"):
        pool.start()
    assert pool.workers == []


def test_an_unstarted_pool_cannot_be_joined_but_can_be_stopped() -> None:
    pool = WorkerPool(identity, 1)
    with pytest.raises(RuntimeError):
        pool.join(0)
    assert pool.stop() is True
