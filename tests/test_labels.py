"""Labels (pyprofiler.labels): the API, inheritance, and what each recorder reads."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import re
import subprocess
import sys
import threading

import pytest
from support import go_pprof, run_in_child, top_table

import pyprofiler
from pyprofiler import proto
from pyprofiler.samplers import labelsets


def test_nested_blocks_add_override_and_restore():
    assert pyprofiler.get_labels() == {}
    with pyprofiler.labels(route="/a", tenant="t1"):
        assert pyprofiler.get_labels() == {"route": "/a", "tenant": "t1"}
        with pyprofiler.labels(tenant="t2", job="j"):
            assert pyprofiler.get_labels() == {"route": "/a", "tenant": "t2", "job": "j"}
        assert pyprofiler.get_labels() == {"route": "/a", "tenant": "t1"}
    assert pyprofiler.get_labels() == {}


def test_a_bad_type_is_a_type_error_naming_the_key():
    with pytest.raises(TypeError, match="'tenant'"):
        with pyprofiler.labels(tenant=42):
            pass
    with pytest.raises(TypeError, match="'tenant'"):
        with pyprofiler.labels(tenant=[1]):  # Unhashable, too.
            pass
    with pytest.raises(TypeError, match="'job'"):
        pyprofiler.labels(job=None)(lambda: None)
    assert pyprofiler.get_labels() == {}


def test_bounds_are_kept_and_stated():
    with pytest.raises(ValueError, match=f"at most {labelsets.MAX_LABELS}"):
        with pyprofiler.labels(**{f"k{i}": "v" for i in range(labelsets.MAX_LABELS + 1)}):
            pass
    with pyprofiler.labels(long="x" * 1000):
        value = pyprofiler.get_labels()["long"]
    assert len(value) == labelsets.MAX_LABEL_CHARS and value.endswith(labelsets.TRUNCATED)
    with pytest.raises(ValueError, match="pyprofiler's own"):
        with pyprofiler.labels(thread="mine"):
            pass


def test_decorator_for_functions_and_coroutine_functions():
    @pyprofiler.labels(job="sync")
    def plain() -> dict:
        return pyprofiler.get_labels()

    @pyprofiler.labels(job="async")
    async def coroutine() -> dict:
        await asyncio.sleep(0)
        return pyprofiler.get_labels()

    assert plain() == {"job": "sync"}
    assert asyncio.run(coroutine()) == {"job": "async"}
    assert pyprofiler.get_labels() == {}


def test_tasks_keep_their_own_labels_as_they_interleave():
    seen: dict[str, list] = {"a": [], "b": []}

    async def route(name: str) -> None:
        with pyprofiler.labels(route=name):
            for _ in range(5):
                await asyncio.sleep(0)
                seen[name].append(pyprofiler.get_labels()["route"])

    async def both() -> None:
        await asyncio.gather(route("a"), route("b"))

    asyncio.run(both())
    assert seen == {"a": ["a"] * 5, "b": ["b"] * 5}


def test_threads_and_executor_calls_inherit_the_labels_of_their_start():
    results: dict[str, dict] = {}
    with pyprofiler.labels(job="parent"):
        thread = threading.Thread(target=lambda: results.update(thread=pyprofiler.get_labels()))
        thread.start()
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            results["executor"] = pool.submit(pyprofiler.get_labels).result(timeout=10)

        async def in_loop() -> None:
            results["to_thread"] = await asyncio.to_thread(pyprofiler.get_labels)
            loop = asyncio.get_running_loop()
            results["run_in_executor"] = await loop.run_in_executor(None, pyprofiler.get_labels)

        asyncio.run(in_loop())
    thread.join(timeout=10)
    expected = {"job": "parent"}
    assert results == dict.fromkeys(
        ("thread", "executor", "to_thread", "run_in_executor"), expected
    )
    # A worker thread keeps no labels of an earlier call.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        with pyprofiler.labels(job="first"):
            assert pool.submit(pyprofiler.get_labels).result(timeout=10) == {"job": "first"}
        assert pool.submit(pyprofiler.get_labels).result(timeout=10) == {}


def test_the_native_sampler_reads_labels():
    assert labelsets.native_reads


def test_goroutine_profile_shows_each_task_and_thread_with_its_labels(tmp_path):
    started = threading.Event()
    stop: list = []

    async def job(n: int, event: asyncio.Event) -> None:
        with pyprofiler.labels(job=str(n)):
            await event.wait()

    async def main() -> None:
        event = asyncio.Event()
        stop.append((asyncio.get_running_loop(), event))
        tasks = [asyncio.ensure_future(job(n, event)) for n in range(100)]
        await asyncio.sleep(0)
        started.set()
        await asyncio.gather(*tasks)

    def waiting_thread() -> None:
        with pyprofiler.labels(role="waiter"):
            started.wait(30)
            while stop:
                threading.Event().wait(0.01)

    loop_thread = threading.Thread(target=asyncio.run, args=(main(),))
    waiter = threading.Thread(target=waiting_thread)
    loop_thread.start()
    waiter.start()
    try:
        assert started.wait(30)
        profile = pyprofiler.lookup("goroutine")
        snapshot = profile.snapshot()
        jobs = {value for s in snapshot.samples for key, value in s.labels if key == "job"}
        assert jobs == {str(n) for n in range(100)}
        assert any(("role", "waiter") in s.labels for s in snapshot.samples)
        text = "".join(profile.text(1))
        assert '# labels: {"job":"7"}' in text
        assert '# labels: {"role":"waiter"}' in text
        path = tmp_path / "goroutine.pb.gz"
        path.write_bytes(proto.encode(snapshot))
        tags = go_pprof(["-tags"], path)
        assert tags.count("\n") > 100 and " 7\n" in tags.replace(": ", " "), tags
    finally:
        loop, event = stop.pop()
        loop.call_soon_threadsafe(event.set)
        loop_thread.join(timeout=30)
        waiter.join(timeout=30)


WORKLOAD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "labels_workload.py")


def focused_share(path, route: str) -> tuple[float, dict[str, tuple[float, float]]]:
    """The route's share of all CPU (%), and its -top table, as `go tool pprof -tagfocus`
    shows them with no node left out."""
    output = go_pprof(
        [f"-tagfocus=route={route}", "-top", "-nodefraction=0", "-nodecount=10000"], path
    )
    share = re.search(r"accounting for \S+, ([\d.]+)% of \S+ total", output)
    assert share, output
    return float(share[1]), top_table(output)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["tasks", "loops", "threads"])
def test_cpu_profile_tells_routes_apart_on_one_loop_two_loops_and_threads(mode, tmp_path):
    path = tmp_path / "cpu.pb.gz"
    result = subprocess.run(
        [sys.executable, WORKLOAD, mode, "10", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    truth = json.loads(result.stdout)
    rooted = top_table(go_pprof(["-tagroot=route", "-top", "-nodefraction=0"], path))
    leaves = top_table(go_pprof(["-tagleaf=route", "-top", "-nodefraction=0"], path))
    for route, function in (("/a", "__main__.work_a"), ("/b", "__main__.work_b")):
        share, table = focused_share(path, route)
        focused = sum(flat for flat, _ in table.values())
        assert table[function][0] >= 0.97 * focused, (mode, route, table)
        timed = 100 * truth["timed"][route] / truth["workers"]
        assert abs(share - timed) <= 5, (mode, route, share, timed)
        # The label as a root above the stacks, and as a leaf below them, holds the same share.
        assert abs(rooted[route][1] - share) <= 0.1 and abs(leaves[route][0] - share) <= 0.1
        ignored = top_table(go_pprof([f"-tagignore=route={route}", "-top"], path))
        assert function not in ignored and ignored, (mode, route, ignored)


def test_heap_profile_tells_tenants_apart(tmp_path):
    path = tmp_path / "heap.pb.gz"
    kept_mb = {"big": 60, "small": 20}

    def tenants() -> None:  # In a child: the heap sampler is process-global.
        pyprofiler.set_mem_profile_rate(32 * 1024)
        kept = []
        for tenant, megabytes in kept_mb.items():
            with pyprofiler.labels(tenant=tenant):
                kept.append([bytearray(10_000) for _ in range(megabytes * 100)])
        with open(path, "wb") as file:
            pyprofiler.write_heap_profile(file)

    code, message = run_in_child(tenants, timeout=120)
    assert code == 0, message
    for tenant, megabytes in kept_mb.items():
        output = go_pprof(
            ["-sample_index=inuse_space", f"-tagfocus=tenant={tenant}", "-top", "-unit=B"], path
        )
        shown = re.search(r"accounting for (\d+)B", output)
        assert shown, output
        # 10 000-byte objects at a 32 KiB mean: ~1 900 and ~600 samples, a few percent off.
        assert abs(int(shown[1]) - megabytes * 1e6) <= 0.15 * megabytes * 1e6, output
