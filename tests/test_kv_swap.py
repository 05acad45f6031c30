"""KV swap on llama.cpp (drivers/llamacpp_swap.py): an evicted sequence's KV is saved to RAM (spilling
to disk past a budget) and restored instead of recomputed; budgets hold; damaged files recompute."""

from __future__ import annotations

import logging
import os

import pytest

import llmos
from llmos.drivers.llamacpp_swap import MIN_SWAP_TOKENS, SwapArea
from llmos.kernel.tenants.tenant import Tenant

#: a prompt of ~430 tokens (over MIN_SWAP_TOKENS) for the request that is preempted
LONG = "Here is a long account of the harbour, its ships, its tides and its weather. " * 24 + "Now continue:"
#: ~740 tokens: with LONG's KV beside it, more than the 1024-token context holds, so LONG's is evicted
URGENT = "Read this list of ports and cargo before you answer the question at the end. " * 46 + "Name one."


def _preempt_and_resume(swap_mb: int, tmp_path):
    """A batch request decodes, an urgent request preempts it and needs its KV cells, then it resumes."""
    with llmos.boot(home=tmp_path, load_entrypoints=False, max_running=1, n_ctx=1024, kv_swap_mb=swap_mb) as k:
        driver = k.load().driver
        victim = k.submit(LONG, tenant=Tenant("nightly", "batch"), max_tokens=40, temperature=0, ignore_eos=True)
        while len(victim.request.output_token_ids) < 8:
            victim.wait(0.01)
        urgent = k.submit(URGENT, tenant=Tenant("desk", "interactive"), max_tokens=24, temperature=0,
                          ignore_eos=True)
        seen = None  # the victim's ps row while its KV is swapped out
        while not urgent.done and seen is None:
            seen = next((r for r in k.ps() if r["id"] == victim.request.request_id and r["swapped"]), None)
        assert urgent.result(120).usage["completion_tokens"] >= 1
        done = victim.result(120)
        return done, driver.stats(), driver.tokenize(LONG), seen


@pytest.mark.model
def test_a_preempted_request_resumes_from_swap_with_a_recomputes_greedy_continuation(tmp_path, scorer):
    swapped, stats, prompt, row = _preempt_and_resume(1024, tmp_path / "swap")
    assert len(prompt) >= MIN_SWAP_TOKENS
    assert row["state"] == "preempted" and row["swapped"]["where"] == "ram" and row["swapped"]["bytes"] > 1e6
    assert swapped.metrics["preemptions"] == 1
    assert stats["swapped_out"] >= 1 and stats["swapped_in"] >= 1, stats
    assert swapped.metrics["cached_prompt_tokens"] >= len(prompt)  # restored, not recomputed
    recomputed, stats_off, _, row_off = _preempt_and_resume(0, tmp_path / "off")
    assert row_off is None  # without swap nothing is kept
    assert recomputed.metrics["preemptions"] == 1 and stats_off["swapped_in"] == 0
    assert recomputed.metrics["cached_prompt_tokens"] == 0  # without swap its KV was lost: recomputed
    assert swapped.usage["completion_tokens"] == recomputed.usage["completion_tokens"] == 40
    scorer.assert_same_or_near_tie(prompt, swapped.token_ids, recomputed.token_ids)


def test_the_swap_area_keeps_its_ram_and_disk_budgets(tmp_path):
    area = SwapArea(ram_bytes=250, disk_bytes=250, spill_dir=tmp_path)
    blobs = [bytes([i]) * 100 for i in range(6)]
    for i, blob in enumerate(blobs):
        area.put(None, [i] * 300, 4, blob)
        ram, disk = area.used()
        assert ram <= 250 and disk <= 250
    assert area.used() == (200, 200) and area.spilled == 4 and area.dropped == 2  # 0 and 1 went furthest
    files = list(tmp_path.rglob("*.kv"))
    assert len(files) == 2 and all(f.stat().st_size == 100 for f in files)
    key, n = area.match([2] * 300 + [9], None)
    entry, data = area.take(key)  # from disk, byte for byte
    assert (n, data, entry.tokens) == (300, blobs[2], [2] * 300)
    assert len(list(tmp_path.rglob("*.kv"))) == 1  # a file taken back is removed
    assert area.match([0] * 300, None) == (None, 0)  # dropped past the disk budget
    assert area.match([5] * 300, "another-adapter") == (None, 0)  # KV of another adapter never matches
    assert area.match([5] * 300, None, "a-tenant") == (None, 0)  # nor another tenant's (NewSequence.cache_salt)
    area.put(None, [7] * 300, 4, b"t" * 100, salt="a-tenant")
    assert area.match([7] * 300, None) == (None, 0) and area.match([7] * 300, None, "a-tenant")[1] == 300
    area.clear()
    assert not any(tmp_path.iterdir())  # its files and its folder are gone
    assert not area.wants(MIN_SWAP_TOKENS - 1) and area.wants(MIN_SWAP_TOKENS)  # short ones recompute
    assert not SwapArea(0).wants(10_000)  # off


def test_spill_files_a_dead_process_left_are_removed(tmp_path):
    dead = tmp_path / "999999999-deadbeef"  # no such pid
    dead.mkdir()
    (dead / "x.kv").write_bytes(b"old")
    alive = tmp_path / f"{os.getpid()}-cafecafe"
    alive.mkdir()
    (alive / "y.kv").write_bytes(b"mine")
    SwapArea(ram_bytes=100, disk_bytes=100, spill_dir=tmp_path)
    assert not dead.exists() and (alive / "y.kv").exists()


@pytest.mark.parametrize("damage", ["truncate", "alter", "delete"])
def test_a_damaged_swap_file_is_recomputed_never_trusted(tmp_path, caplog, damage):
    area = SwapArea(ram_bytes=100, disk_bytes=1000, spill_dir=tmp_path)
    area.put(None, [1] * 300, 4, b"a" * 100)
    area.put(None, [2] * 300, 4, b"b" * 100)  # the first one spills
    [path] = tmp_path.rglob("*.kv")
    if damage == "truncate":
        path.write_bytes(b"a" * 60)
    elif damage == "alter":
        path.write_bytes(b"a" * 99 + b"X")
    else:
        path.unlink()
    key, _n = area.match([1] * 300, None)
    with caplog.at_level(logging.WARNING, logger="llmos.llamacpp"):
        assert area.take(key) is None
    assert "recomputing" in caplog.text and area.failed == 1
    assert not path.exists()
    assert area.take(area.match([2] * 300, None)[0])[1] == b"b" * 100  # the RAM entry is intact



def test_swap_in_is_weighed_against_recompute_with_measured_costs():
    from llmos.drivers.llamacpp_swap import FLOOR_SWAP_TOKENS, MIN_SWAP_TOKENS, SwapCosts

    costs = SwapCosts()
    # nothing measured yet: the token threshold decides
    assert not costs.worth_it(MIN_SWAP_TOKENS - 1, 10 << 20) and costs.worth_it(MIN_SWAP_TOKENS, 10 << 20)
    costs.computed(512, 1.0)  # prefill: 512 tokens/s
    costs.computed(8, 10.0)  # a decode-sized step says nothing about prefill: ignored
    assert costs.prefill_tps == 512
    costs.restored("ram", 100 << 20, 2000, 0.1)  # restores at 1000 MiB/s; ~52 KiB of KV a token
    # 100 tokens: 0.195 s to recompute, ~5 MiB to restore in 0.005 s: swap, below the old threshold too
    assert costs.worth_it(100)
    # the same 100 tokens inside a 200 MiB entry (one restores all of it): recompute
    assert not costs.worth_it(100, 200 << 20)
    costs.restored("disk", 100 << 20, 2000, 50.0)  # a slow disk: 2 MiB/s
    assert costs.worth_it(1000, 25 << 20, "ram") and not costs.worth_it(1000, 25 << 20, "disk")
    assert not costs.worth_it(FLOOR_SWAP_TOKENS - 1, 1)  # never for a handful of tokens


def test_a_swap_area_learns_its_restore_speed_from_real_restores(tmp_path):
    area = SwapArea(1 << 20, 1 << 20, tmp_path)
    area.put(None, list(range(300)), 2, b"x" * 3000)
    key, n = area.match(list(range(300)), None)
    assert area.wants(n, key)  # unmeasured: 300 >= MIN_SWAP_TOKENS
    _entry, data = area.take(key)
    area.restored(0.001)
    assert area.costs.restore_bps["ram"] is not None and area.costs.bytes_per_token == 10
    assert area.stats()["swap_in_ram_mb_per_s"] is not None
