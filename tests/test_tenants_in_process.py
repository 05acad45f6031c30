"""Tenants inside one process: the tools an agent calls see memfs as its tenant, which tools a tenant's
agents get, and the priority a tenant's memfs search is embedded at (the HTTP side: test_tenants.py)."""

from __future__ import annotations

import json

import pytest

pytestmark = [pytest.mark.cli, pytest.mark.model]


def test_the_tools_an_agent_calls_see_memfs_as_its_tenant(tmp_path):
    """What an agent's tools do for a tenant (a tool that takes the kernel gets the tenant's view), and
    memfs prefixes that differ only in case stay apart."""
    import llmos
    from llmos.kernel.errors import TenantDeniedError
    from llmos.kernel.tenants.scope import ScopedMem
    from llmos.kernel.tenants.tenant import Tenant

    def denied(tool: str, args: dict) -> bool:
        try:
            result = kernel.call_tool(tool, args, tenant=alice, approve=yes)
        except TenantDeniedError:
            return True
        return not result.ok and "tenant 'alice'" in (result.error or "")

    kernel = llmos.boot(home=tmp_path / "home", load_entrypoints=False)
    try:
        kernel.mem.write("/home/bob/secret.txt", "bob's password is hunter2 zebra")
        kernel.mem.write("/HOME/ALICE/admins.txt", "only for admins: zebra")
        kernel.mem.write("/home/alice/mine.txt", "alice keeps a zebra")
        alice, yes = Tenant("alice"), (lambda *_a: "once")
        result = kernel.call_tool("mem_find", {"query": "zebra password", "k": 10}, tenant=alice, approve=yes)
        assert result.ok and [h["path"] for h in result.value] == ["/home/alice/mine.txt"]
        assert denied("mem_cat", {"path": "/home/bob/secret.txt"})
        assert denied("mem_write", {"path": "/home/bob/x.txt", "text": "x"})
        assert kernel.call_tool("mem_cat", {"path": "/home/bob/secret.txt"}, approve=yes).ok  # the owner's own call
        scoped = ScopedMem(kernel.mem, alice, kernel.tenants)
        assert [e["path"] for e in scoped.ls("/home/alice")] == ["/home/alice/mine.txt"]
        assert scoped.rm("/home/alice", recursive=True) == 1
        assert kernel.mem.cat("/HOME/ALICE/admins.txt") == "only for admins: zebra"  # not "below" /home/alice
        # the rest of the kernel a tool gets: requests and tool calls as the tenant, nothing of the machine
        from llmos.kernel.tenants.scope import TenantView

        view = TenantView(kernel, alice)
        assert view.generate("Hi", max_tokens=1, temperature=0).usage["completion_tokens"] == 1
        assert kernel.tenants.usage()["alice"]["requests"] == 1  # through the kernel's generate, as alice
        assert view.call_tool("mem_cat", {"path": "/home/bob/secret.txt"}, approve=yes).ok is False
        for name in ("sessions", "processes", "modules", "cancel", "insmod"):
            with pytest.raises(AttributeError, match="tenant 'alice'"):
                getattr(view, name)
    finally:
        kernel.shutdown()


def test_a_tenants_agents_get_only_tools_that_need_nothing_beyond_its_memfs(tmp_path):
    import llmos
    from llmos.kernel.errors import TenantDeniedError
    from llmos.kernel.tenants.tenant import ADMIN_TENANT, Tenant
    from llmos.kernel.tools.tools import Tool
    from llmos.shell.server.tenancy import agent_tools

    def fetch_url(url: str) -> str:
        """Fetch a web page."""
        return url

    kernel = llmos.boot(home=tmp_path / "home", load_entrypoints=False)
    try:
        kernel.tools._tools["fetch_url"] = Tool.from_function(fetch_url, name=None, capabilities=["net"], plugin="t")
        alice = Tenant("alice")
        given = agent_tools(kernel, alice, None)
        assert "fetch_url" not in given and {"mem_find", "mem_cat", "calculator"} <= set(given)
        assert agent_tools(kernel, alice, ["mem_cat"]) == ["mem_cat"]
        with pytest.raises(TenantDeniedError, match="fetch_url"):
            agent_tools(kernel, alice, ["mem_cat", "fetch_url"])
        assert agent_tools(kernel, ADMIN_TENANT, ["fetch_url"]) == ["fetch_url"]  # the machine's tools: admins
        assert agent_tools(kernel, ADMIN_TENANT, None) is None  # all of them
        denials = [json.loads(line) for line in (tmp_path / "home" / "audit.jsonl").read_text().splitlines()]
        assert any(e["who"] == "alice" and e["tool"] == "agent tools" and e["decision"] == "denied" for e in denials)
    finally:
        kernel.shutdown()


def test_a_memfs_search_embeds_its_query_at_its_tenants_priority():
    """A batch tenant's `mem find` does not jump the shared embedding queue (memfs embeds searches "high")."""
    from llmos.kernel.sched.request import Priority
    from llmos.kernel.tenants.scope import ScopedMem
    from llmos.kernel.tenants.tenant import Tenant

    class Mem:  # records what the scoped view asks of memfs
        def __init__(self):
            self.priorities = []

        def find(self, query, within, k, priority="high"):
            self.priorities.append(priority)
            return []

    mem = Mem()
    ScopedMem(mem, Tenant("nightly", "batch"), table=None).find("tides", "/home/nightly")
    ScopedMem(mem, Tenant("desk", "interactive"), table=None).find("tides", "/home/desk")
    assert mem.priorities == [Priority.BATCH, Priority.HIGH]
