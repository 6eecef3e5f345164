"""The local executor's pool bookkeeping (the processes themselves: tests/integration)."""

from __future__ import annotations

from pathlib import Path

from shardkit.local.executor import FunctionSpec, LocalLambda, Pool


def _spec(version: str) -> FunctionSpec:
    return FunctionSpec(
        region="eu-west-1",
        name="f",
        version=version,
        code_sha256="",
        handler="h.h",
        memory_mb=128,
        timeout_s=3,
        concurrency=2,
        env=(),
    )


def test_a_new_version_retires_the_idle_pools_of_older_ones(tmp_path: Path) -> None:
    executor = LocalLambda("http://127.0.0.1:9", tmp_path, lambda service, region: None)
    try:
        idle, busy = Pool(_spec("1"), tmp_path, {}), Pool(_spec("2"), tmp_path, {})
        other = Pool(FunctionSpec(**{**_spec("1").__dict__, "name": "g"}), tmp_path, {})
        busy.busy = 1  # serving a request: left to finish
        executor._pools.update(
            {
                ("eu-west-1", "f", "1"): idle,
                ("eu-west-1", "f", "2"): busy,
                ("eu-west-1", "g", "1"): other,
            }
        )
        executor._retire_versions(_spec("3"))
        assert set(executor._pools) == {("eu-west-1", "f", "2"), ("eu-west-1", "g", "1")}
    finally:
        executor.close()


def test_an_invoke_waits_for_a_prewarm_under_way_instead_of_a_second_cold_start(
    tmp_path: Path,
) -> None:
    import threading
    import time

    pool = Pool(_spec("1"), tmp_path, {})
    pool.busy, pool.warming = 1, 1  # a pre-warm is starting the pool's first worker
    warmed = type("Warm", (), {"alive": True})()
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(pool.acquire()))
    waiter.start()
    time.sleep(0.05)
    assert got == []  # waiting, not starting a worker of its own
    pool.release(warmed, warmed=True)  # type: ignore[arg-type]
    waiter.join(5)
    assert got == [warmed] and (pool.busy, pool.warming, pool.idle) == (1, 0, [])
