"""The shell's screens, driven with Textual's Pilot on the real SmolLM2 kernel: the memfs browser, the
tool-approval modal, the process monitor (top) and the command palette (tests/test_shell.py: the chat)."""

from __future__ import annotations


import pytest

from llmos.shell.app import ShellApp
from llmos.shell.screens import ApprovalScreen, MemfsScreen, ModulesScreen, TopScreen

from .test_shell import booted, command, run, until


@pytest.mark.model
def test_memfs_commands_and_browser(kernel):
    async def go():
        app = ShellApp(kernel, resume=False)
        async with app.run_test(size=(80, 24)) as pilot:
            await booted(app, pilot)
            for line, expected, is_error in [
                ("/write /shelltest/tea.md Green tea is brewed at 80 degrees.", "wrote", False),
                ("/ls /shelltest", "/shelltest/tea.md", False),
                ("/cat /shelltest/tea.md", "80 degrees", False),
                ("/cat /shelltest/missing.md", "missing", True),
                ("/find brewing temperature for tea", "/shelltest/tea.md", False),
                ("/rag /shelltest/tea.md", "not a directory", True),
                ("/rag /shelltest", "passages under", False),
            ]:
                answer = await command(app, pilot, line)
                assert answer.role == ("error" if is_error else "info") and expected in answer.text, (line, answer.text)
            assert "rag /shelltest" in app.sub_title
            await command(app, pilot, "/mem")
            await until(pilot, lambda: isinstance(app.screen, MemfsScreen))
            screen = app.screen
            await until(pilot, lambda: bool(screen.query("#mem-tree")) and bool(screen.query("#mem-results")))  # mounted
            tree = screen.query_one("#mem-tree")
            await until(pilot, lambda: any(str(n.label) == "shelltest/" for n in tree.root.children))
            search = screen.query_one("#mem-search")
            search.focus()
            search.value = "green tea"
            await pilot.press("enter")
            results = screen.query_one("#mem-results")
            await until(pilot, lambda: results.option_count > 0 and results.has_class("shown"))
            await pilot.press("enter")  # open the first result
            await until(pilot, lambda: screen.previewed == "/shelltest/tea.md")
            await pilot.press("escape", "escape")
            await until(pilot, lambda: not isinstance(app.screen, MemfsScreen))
    run(go())


@pytest.mark.model
def test_tool_approval_modal(kernel):
    async def go():
        app = ShellApp(kernel, resume=False)
        async with app.run_test(size=(80, 24)) as pilot:
            await booted(app, pilot)
            call = '/call mem_find {"query": "tea"}'  # needs memfs.read, which nobody granted
            await app.run_command(call)
            await until(pilot, lambda: isinstance(app.screen, ApprovalScreen), what="the approval dialog")
            assert "mem_find" in app.screen.tool and app.screen.missing == frozenset({"memfs.read"})
            await pilot.press("d")
            await until(pilot, lambda: app.chat_log.messages[-1].role == "error")
            assert "needs capability memfs.read" in app.chat_log.messages[-1].text
            await app.run_command(call)
            await until(pilot, lambda: isinstance(app.screen, ApprovalScreen))
            await pilot.click("#once")
            await until(pilot, lambda: app.chat_log.messages[-1].role in ("info", "error")
                        and "mem_find" in app.chat_log.messages[-1].text)
            assert app.chat_log.messages[-1].role == "info", app.chat_log.messages[-1].text
            decisions = [r["decision"] for r in kernel.tools.audit.read(5) if r["tool"] == "mem_find"]
            assert decisions[-2:] == ["denied", "approved"]
    run(go())


@pytest.mark.model
def test_top_screen_updates_and_kills(kernel):
    async def go():
        app = ShellApp(kernel, resume=False)
        async with app.run_test(size=(80, 24)) as pilot:
            await booted(app, pilot)
            await pilot.press("f2")
            await until(pilot, lambda: isinstance(app.screen, TopScreen))
            top = app.screen
            handle = kernel.submit("Count from one to a thousand.", max_tokens=400, ignore_eos=True, owner="toptest")
            table = top.query_one("#procs")
            await until(pilot, lambda: handle.id in {str(k.value) for k in table.rows}, 20, "the request row")
            seen = top.refreshes
            await until(pilot, lambda: top.refreshes >= seen + 2, 10, "refreshes")
            assert any(v > 0 for v in top.throughput["smollm2@llamacpp"]), "no throughput recorded"
            assert top.query("Sparkline")
            table.move_cursor(row=table.get_row_index(handle.id))
            await pilot.press("k")
            await until(pilot, lambda: handle.done, 20, "the kill")
            assert handle.status.name == "FINISHED_CANCELLED"
            await until(pilot, lambda: handle.id not in {str(k.value) for k in table.rows}, 5)
            tenants = top.query_one("#tenants")  # its owner's usage, counted as it ended
            await until(pilot, lambda: any(tenants.get_row_at(i)[0] == "toptest" for i in range(tenants.row_count)),
                        10, "the tenant row")
            await pilot.press("escape")
            assert not isinstance(app.screen, TopScreen)
            await pilot.press("f3")
            await until(pilot, lambda: isinstance(app.screen, ModulesScreen))
            table = app.screen.query_one("#modules")
            if kernel.modules_info():  # other tests of the session may have installed some
                await until(pilot, lambda: table.row_count == len(kernel.modules_info()))
            else:
                status = app.screen.query_one("#modules-status")
                await until(pilot, lambda: "no modules installed" in str(status.render()))
    run(go())


@pytest.mark.model
def test_command_palette_lists_shell_commands(kernel):
    async def go():
        app = ShellApp(kernel, resume=False)
        async with app.run_test(size=(80, 24)) as pilot:
            await booted(app, pilot)
            await pilot.press("ctrl+p")
            await pilot.pause(0.2)
            await pilot.press(*"/top")
            await pilot.pause(0.5)
            await pilot.press("enter")
            await until(pilot, lambda: isinstance(app.screen, TopScreen), 10, "the top screen")
    run(go())


def test_firing_alerts_show_in_the_status_line_and_top(tmp_path):
    """A kernel whose rule holds from the first evaluation (its RSS is above 1 MiB): the shell's status
    line and the top screen show it firing; a kernel without rules is not polled (test_alerts.py)."""
    import llmos
    from llmos.plugins.manager import PluginManager

    (tmp_path / "llmos.toml").write_text('[alerts]\ninterval = "0.1s"\n[alerts.rules.memory]\n'
                                         'metric = "rss_mb"\nabove = 1\nsummary = "the kernel is big"\n')
    kernel = llmos.boot(home=tmp_path, plugins=PluginManager(load_entrypoints=False))

    async def go():
        app = ShellApp(kernel, resume=False)
        async with app.run_test(size=(100, 24)) as pilot:
            await booted(app, pilot)
            await until(pilot, lambda: "ALERT memory (rss_mb > 1:" in str(app.status.render()), 10, "the alert")
            assert app.status.has_class("alert")
            await pilot.press("f2")
            await until(pilot, lambda: isinstance(app.screen, TopScreen))
            label = app.screen.query_one("#alerts")
            await until(pilot, lambda: "FIRING memory: rss_mb > 1" in str(label.render()), 10, "top's alert row")
            assert "the kernel is big" in str(label.render())
    try:
        run(go())
    finally:
        kernel.shutdown()
