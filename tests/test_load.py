"""The load tests (`make load`), against `llmos serve` on loopback.

1. Capacity: 1,000 requests from 64 concurrent clients with a queue cap of 128 behind 16 running slots.
   64 clients can never fill that queue, so every request must complete within its deadline (a 429
   here would be a leak in the queue's accounting), the server's RSS must stay bounded, and afterwards
   the kernel must hold no sequence, KV slot or module reference.
2. Overload: 32 concurrent clients (waiting Retry-After after a 429) against 2 running slots and a
   queue of 4. The queue must fill: 429s with Retry-After must occur, the queue cap must hold, every
   request that is not turned away must complete, and the server must serve normally afterwards.

Figures go to $LOAD_REPORT (JSON, one object per test) for docs/reliability.md."""

from __future__ import annotations

import concurrent.futures
import json
import os
import threading
import time
from pathlib import Path

import httpx
import pytest

from .lora import make_lora, torch_model_dir
from .util import cancelled_total, start_server

pytestmark = [pytest.mark.load, pytest.mark.model, pytest.mark.cli]

REQUESTS, CLIENTS, QUEUE_CAP, DEADLINE_S = 1000, 64, 128, 120.0
OVERLOAD_REQUESTS, OVERLOAD_CLIENTS, OVERLOAD_RUNNING, OVERLOAD_QUEUE = 256, 32, 2, 4


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def install_gguf_lora(home: Path) -> None:
    """Module `alpha` for the served SmolLM2 as a GGUF LoRA (made with peft, exported for llama.cpp)."""
    import llmos

    with llmos.boot(home=home, load_entrypoints=False) as kernel:
        src = torch_model_dir(kernel, home)
        peft_dir = make_lora(src, home / "alpha-peft", seed=1, targets=["q_proj", "v_proj"], scale=0.3)
        kernel.install_module(str(peft_dir), name="alpha-peft", base="smollm2")
        manifest = kernel.export_module("alpha-peft", "gguf")
        kernel.install_module(str(kernel.module_store.weights_path(manifest, "gguf")), name="alpha", base="smollm2")


def check_response(r: httpx.Response) -> int:
    """A completion, or a 429 in the OpenAI error shape with a Retry-After of whole seconds."""
    if r.status_code == 200:
        assert r.json()["choices"][0]["finish_reason"] in ("stop", "length")
    elif r.status_code == 429:
        assert int(r.headers["retry-after"]) >= 1 and r.json()["error"]["type"] == "rate_limit_error", r.text
    return r.status_code


def assert_nothing_left(base: str) -> None:
    """No live request and no driver sequence, running or waiting, on any engine."""
    time.sleep(0.5)
    assert httpx.get(f"{base}/llmos/ps").json() == []
    engines = httpx.get(f"{base}/llmos/engines").json()
    assert engines and all(e["active_sequences"] == 0 and e["running"] == 0 and e["waiting"] == 0
                           for e in engines), engines


def report(name: str, figures: dict) -> None:
    print(json.dumps({name: figures}))
    if os.environ.get("LOAD_REPORT"):
        path = Path(os.environ["LOAD_REPORT"])
        done = json.loads(path.read_text()) if path.exists() and path.read_text().strip() else {}
        path.write_text(json.dumps({**done, name: figures}, indent=2))


def test_thousand_requests_from_64_clients(tmp_path):
    install_gguf_lora(tmp_path / "home")
    proc, base = start_server(tmp_path, "--max-queue", str(QUEUE_CAP), env={"LLMOS_MAX_RUNNING": "16"})
    try:
        warm = httpx.post(f"{base}/v1/completions", json={"model": "smollm2", "prompt": "Hi", "max_tokens": 2},
                          timeout=120)
        assert warm.status_code == 200
        baseline_rss = rss_mb(proc.pid)
        peak = {"rss": baseline_rss}
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.25):
                peak["rss"] = max(peak["rss"], rss_mb(proc.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        clients = [httpx.Client(timeout=DEADLINE_S) for _ in range(CLIENTS)]

        def one(i: int) -> tuple[int, float]:
            started = time.monotonic()
            body = {"model": "smollm2:alpha" if i % 4 == 0 else "smollm2", "prompt": f"Request {i}: name a colour.",
                    "max_tokens": 8, "temperature": 0.7, "seed": i}
            client = clients[i % CLIENTS]
            if i % 10 == 5:  # a client that goes away mid-stream: its request must be cancelled and freed
                with client.stream("POST", f"{base}/v1/completions", json={**body, "stream": True,
                                                                           "max_tokens": 200}) as r:
                    if r.status_code == 200:
                        next(r.iter_lines())
                    return r.status_code, time.monotonic() - started
            return check_response(client.post(f"{base}/v1/completions", json=body)), time.monotonic() - started

        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
            outcomes = list(pool.map(one, range(REQUESTS)))  # an exception (e.g. a timeout) fails the test
        wall = time.monotonic() - started
        done.set()
        for c in clients:
            c.close()
        codes = [code for code, _ in outcomes]
        slowest = max(s for _, s in outcomes)
        # 64 clients never fill 16 running + 128 queued: no 429, every request completes (100% >= 99%)
        assert codes.count(200) == REQUESTS, {code: codes.count(code) for code in set(codes)}
        assert slowest < DEADLINE_S
        assert peak["rss"] < baseline_rss + 500, (baseline_rss, peak["rss"])
        # nothing leaked: no live request, no driver sequence, no module reference
        assert_nothing_left(base)
        modules = {m["name"]: m for m in httpx.get(f"{base}/llmos/modules").json()}
        assert modules["alpha"]["loaded"] and all(row["use_count"] == 0 for row in modules["alpha"]["loaded"])
        cancelled = cancelled_total(base)
        streams_dropped = sum(1 for i in range(REQUESTS) if i % 10 == 5)
        assert cancelled >= 0.9 * streams_dropped  # the dropped streams (a few may finish before the drop)
        report("capacity", {"requests": REQUESTS, "clients": CLIENTS, "queue_cap": QUEUE_CAP,
                            "completed": codes.count(200), "wall_s": round(wall, 1), "slowest_s": round(slowest, 2),
                            "rss_baseline_mb": round(baseline_rss), "rss_peak_mb": round(peak["rss"]),
                            "leaked_sequences": 0, "streams_dropped": streams_dropped,
                            "cancelled_in_kernel": cancelled})
    finally:
        proc.terminate()
        proc.wait(30)


def test_an_overloaded_small_queue_turns_requests_away_with_429(tmp_path):
    proc, base = start_server(tmp_path, "--max-queue", str(OVERLOAD_QUEUE),
                              env={"LLMOS_MAX_RUNNING": str(OVERLOAD_RUNNING)})
    try:
        body = {"model": "smollm2", "prompt": "Name a colour.", "max_tokens": 8}
        assert httpx.post(f"{base}/v1/completions", json=body, timeout=120).status_code == 200  # warm
        live = {"max": 0}
        done = threading.Event()

        def watch() -> None:  # the live requests (running + queued), sampled while the clients hammer
            while not done.wait(0.02):
                live["max"] = max(live["max"], len(httpx.get(f"{base}/llmos/ps").json()))

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        clients = [httpx.Client(timeout=DEADLINE_S) for _ in range(OVERLOAD_CLIENTS)]
        start = threading.Barrier(OVERLOAD_CLIENTS)

        def one(i: int) -> int:
            if i < OVERLOAD_CLIENTS:
                start.wait(60)  # the first wave arrives at once
            r = clients[i % OVERLOAD_CLIENTS].post(f"{base}/v1/completions", json={**body, "seed": i})
            if check_response(r) == 429:
                time.sleep(int(r.headers["retry-after"]))  # a well-behaved client, then its next request
            return r.status_code

        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(OVERLOAD_CLIENTS) as pool:
            codes = list(pool.map(one, range(OVERLOAD_REQUESTS)))  # an exception (e.g. a timeout) fails the test
        wall = time.monotonic() - started
        done.set()
        watcher.join(5)
        for c in clients:
            c.close()
        rejected, completed = codes.count(429), codes.count(200)
        assert rejected > 0, "the queue never filled"  # each 429 had a Retry-After (check_response)
        assert completed == OVERLOAD_REQUESTS - rejected  # every request not turned away completed (100% >= 99%)
        assert 0 < live["max"] <= OVERLOAD_RUNNING + OVERLOAD_QUEUE, live  # the cap held
        assert_nothing_left(base)
        assert httpx.post(f"{base}/v1/completions", json=body, timeout=120).status_code == 200  # and it recovered
        report("overload", {"requests": OVERLOAD_REQUESTS, "clients": OVERLOAD_CLIENTS,
                            "running": OVERLOAD_RUNNING, "queue_cap": OVERLOAD_QUEUE, "completed": completed,
                            "rejected_429": rejected, "max_live_seen": live["max"], "wall_s": round(wall, 1)})
    finally:
        proc.terminate()
        proc.wait(30)
