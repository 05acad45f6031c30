"""Prefix reuse on the torch driver (drivers/torch_prefix.py): a shared system prompt is computed once.

The store's rules (adapter separation, byte budget, forgetting) run on real DynamicCache tensors; the
reuse itself runs through the real driver on SmolLM2 and must give the tokens a cold computation gives.
"""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from llmos.drivers.torch_prefix import MIN_PREFIX_TOKENS, PrefixStore

SYSTEM = " ".join(f"Rule {i}: answer politely and keep each answer short." for i in range(30))


def _cache(n: int, fill: float = 1.0, layers: int = 2) -> DynamicCache:
    cache = DynamicCache()
    for i in range(layers):
        cache.update(torch.full((1, 2, n, 4), fill), torch.full((1, 2, n, 4), -fill), i)
    return cache


def test_a_prompt_sharing_a_kept_prefix_gets_exactly_that_kv():
    store = PrefixStore(1 << 20)
    first = list(range(100))
    store.remember(None, first, 0, _cache(100, fill=7.0))
    n, cache = store.lookup(None, first[:60] + [999, 998], limit=61)
    assert n == 60
    assert cache.layers[0].keys.shape[2] == 60 and bool((cache.layers[1].keys == 7.0).all())
    assert store.hits == 1 and store.tokens_reused == 60


def test_the_last_prompt_token_and_short_matches_are_never_reused():
    store = PrefixStore(1 << 20)
    store.remember(None, list(range(100)), 0, _cache(100))
    assert store.lookup(None, list(range(100)), limit=99)[0] == 99  # its logits are needed: computed again
    assert store.lookup(None, list(range(MIN_PREFIX_TOKENS - 1)) + [5000], limit=100) == (0, None)


def test_kv_computed_under_one_adapter_is_not_given_to_another():
    store = PrefixStore(1 << 20)
    store.remember("a", list(range(100)), 0, _cache(100))
    assert store.lookup("b", list(range(100)), limit=99) == (0, None)
    assert store.lookup(None, list(range(100)), limit=99) == (0, None)
    store.forget("a")
    assert store.lookup("a", list(range(100)), limit=99) == (0, None) and store.bytes == 0


def test_kv_kept_for_one_tenant_is_neither_given_to_another_nor_replaced_by_its_longer_prompt():
    store = PrefixStore(1 << 20)
    store.remember(None, list(range(100)), 0, _cache(100, fill=1.0), salt="alice")
    assert store.lookup(None, list(range(100)), limit=99, salt="bob") == (0, None)
    assert store.lookup(None, list(range(100)), limit=99) == (0, None)  # in-process callers are another salt
    store.remember(None, list(range(120)), 0, _cache(120, fill=2.0), salt="bob")  # extends alice's: both kept
    n, cache = store.lookup(None, list(range(100)), limit=99, salt="alice")
    assert n == 99 and bool((cache.layers[0].keys == 1.0).all()) and len(store) == 2


def test_the_byte_budget_evicts_least_recently_used_entries():
    one = sum(t.numel() * t.element_size() for layer in _cache(100).layers for t in (layer.keys, layer.values))
    store = PrefixStore(2 * one)
    for base in (0, 1000, 2000):  # three unrelated prompts, room for two
        if base == 2000:
            store.lookup(None, list(range(0, 100)), limit=99)  # touch the first: the second is the oldest now
        store.remember(None, list(range(base, base + 100)), 0, _cache(100))
    assert store.bytes <= 2 * one and len(store) == 2
    assert store.lookup(None, list(range(1000, 1100)), limit=99) == (0, None)
    assert store.lookup(None, list(range(0, 100)), limit=99)[0] == 99


def test_a_longer_prompt_replaces_the_kept_prompt_it_extends():
    store = PrefixStore(1 << 20)
    store.remember(None, list(range(100)), 0, _cache(100))
    store.remember(None, list(range(150)), 0, _cache(150))  # the next turn of the same chat
    assert len(store) == 1 and store.lookup(None, list(range(160)), limit=159)[0] == 150


@pytest.mark.model
def test_a_shared_system_prompt_is_computed_once_and_answers_as_computed_cold(kernel):
    driver = kernel.load("smollm2", driver="torch").driver

    def ask(question):
        return kernel.chat([{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
                           driver="torch", max_tokens=12, temperature=0)

    driver._reuse.forget(everything=True)
    ask("What is the capital of France?")  # computes the system prompt and keeps it
    warm = ask("Name a primary colour.")
    shared = len(driver.tokenize_chat([{"role": "system", "content": SYSTEM}, {"role": "user", "content": "x"}])) - 8
    assert warm.metrics["cached_prompt_tokens"] >= shared > 200
    driver._reuse.forget(everything=True)
    cold = ask("Name a primary colour.")
    assert cold.metrics["cached_prompt_tokens"] == 0
    assert warm.token_ids == cold.token_ids


@pytest.mark.model
def test_with_prefix_cache_off_nothing_is_kept(llmos_home):
    import llmos
    from llmos.kernel.config import Config

    with llmos.boot(Config.load(llmos_home), load_entrypoints=False, prefix_cache=False) as k:
        driver = k.load("smollm2", driver="torch").driver
        for q in ("What is 2 plus 2?", "Say hello."):
            c = k.chat([{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}], driver="torch",
                       max_tokens=2)
            assert c.metrics["cached_prompt_tokens"] == 0
        assert driver.stats()["cached_prefixes"] == 0
