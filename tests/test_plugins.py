"""The plugin API: hooks, schemas, entry-point loading, capabilities and audit, MCP servers."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Literal, Optional

import pytest

import llmos
from llmos.kernel.tools.capabilities import ToolDeniedError
from llmos.kernel.tools.tools import Tool, ToolArgumentError
from llmos.plugins import hookspecs
from llmos.plugins.manager import PluginManager

from .fakes import FakeDriver
from .test_kernel_fake import plugin_manager as fake_driver_plugins
from .util import run_llmos

ROOT = Path(__file__).resolve().parents[1]

PLUGIN_SOURCE = '''
"""A throwaway third-party plugin, installed through the entry-point machinery."""
import time
from typing import Literal, Optional

from llmos import hookimpl

SEEN = []


def weather(city: str, unit: Literal["c", "f"] = "c", days: Optional[int] = None) -> dict:
    """Pretend to fetch the weather for a city."""
    return {"city": city, "unit": unit, "days": days, "temp": 21 if unit == "c" else 70}


def slow(seconds: float) -> str:
    """Sleep, to test timeouts."""
    time.sleep(seconds)
    return "done"


def boom() -> str:
    """Always fails."""
    raise RuntimeError("kaboom")


def shout(kernel, text: str, times: int = 1) -> dict:
    """Upper-case some text."""
    return {"text": (text.upper() + " ") * times}


@hookimpl
def register_tools(register):
    register(weather, capabilities=["net"])
    register(slow)
    register(boom)


@hookimpl
def register_tasks(register):
    register("shout", shout)


@hookimpl
def register_commands(register):
    register("hello", lambda kernel, args: "hello " + " ".join(args), help="Say hello.")


@hookimpl(wrapper=True)
def prepare_prompt(prompt):
    if prompt.messages:
        for m in prompt.messages:
            m["content"] = m["content"].replace("password123", "[redacted]")
    if prompt.text:
        prompt.text = prompt.text.replace("password123", "[redacted]")
    return (yield)


@hookimpl
def request_submitted(request):
    SEEN.append(("submitted", request["id"]))


@hookimpl
def request_finished(request):
    SEEN.append(("finished", request["id"], request["status"]))


@hookimpl
def kernel_booted(kernel):
    SEEN.append(("booted",))


@hookimpl
def kernel_shutdown(kernel):
    SEEN.append(("shutdown",))
'''


def install_plugin(root: Path, name: str, source: str) -> Path:
    """Write a module plus a dist-info with an entry point, as `pip install` would."""
    (root / f"{name}.py").write_text(textwrap.dedent(source))
    info = root / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[llmos]\n{name} = {name}\n")
    return root


@pytest.fixture
def site(tmp_path, monkeypatch):
    install_plugin(tmp_path, "myplug", PLUGIN_SOURCE)
    install_plugin(tmp_path, "brokenplug", "import does_not_exist\n")
    install_plugin(tmp_path, "raisingplug", textwrap.dedent('''
        from llmos import hookimpl

        @hookimpl
        def register_tools(register):
            raise RuntimeError("cannot register")
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("LLMOS_PLUGINS", "myplug,brokenplug,raisingplug")
    yield tmp_path
    for mod in ("myplug", "brokenplug", "raisingplug"):
        sys.modules.pop(mod, None)


@pytest.fixture
def kernel_with_plugins(site, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "llmos.toml").write_text('[capabilities.tools]\nweather = ["net"]\n')
    pm = PluginManager(load_entrypoints=True)
    for name, plugin in fake_driver_plugins(FakeDriver).list_name_plugin():
        if name == "test-drivers":
            pm.register(plugin, name=name)
    k = llmos.boot(home=home, plugins=pm)
    yield k
    k.shutdown()


# -- the contract ---------------------------------------------------------------------------------

def hook_names() -> list[str]:
    return sorted(n for n in dir(hookspecs) if hasattr(getattr(hookspecs, n), "llmos_spec"))


def hook_implementations() -> dict[str, list[str]]:
    """Hook name -> the test modules implementing it: a function or method decorated with `hookimpl`,
    in the module itself or in a plugin's source the module installs (a string literal importing it)."""
    found: dict[str, list[str]] = {}

    def is_hookimpl(decorator: ast.expr) -> bool:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        return getattr(target, "id", getattr(target, "attr", None)) == "hookimpl"

    def scan(tree: ast.AST, where: str) -> None:
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and any(map(is_hookimpl, node.decorator_list)):
                found.setdefault(node.name, []).append(where)

    for path in sorted((ROOT / "tests").glob("test_*.py")):
        tree = ast.parse(path.read_text())
        scan(tree, path.name)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and "import hookimpl" in node.value:
                scan(ast.parse(textwrap.dedent(node.value)), f"{path.name} (plugin source)")
    return found


def test_every_hook_has_a_test_and_a_doc_section():
    docs = (ROOT / "docs" / "plugins.md").read_text()
    implemented = hook_implementations()
    assert "register_tools" in implemented and "not_a_hook" not in implemented  # the scan itself works
    for name in hook_names():
        assert f"### {name}" in docs, f"docs/plugins.md has no section for {name}"
        assert name in implemented, f"no test implements {name} (a function decorated with @hookimpl)"
        spec = getattr(hookspecs, name)
        assert spec.__doc__ and "\n" not in spec.__doc__.strip(), f"{name} needs a one-line docstring"


def test_schema_from_signature():
    def f(a: int, b: float, c: str, d: bool, e: list[str], g: dict[str, int], h: Literal["x", "y"] = "x",
          i: Optional[int] = None) -> None:
        """Do things.

        More text that is not the summary."""

    tool = Tool.from_function(f, name=None, capabilities=["fs.read"], plugin="t")
    props = tool.schema["properties"]
    assert tool.description == "Do things." and tool.capabilities == {"fs.read"}
    assert tool.schema["required"] == ["a", "b", "c", "d", "e", "g"]
    assert [props[k]["type"] for k in "abcde"] == ["integer", "number", "string", "boolean", "array"]
    assert props["g"]["type"] == "object" and props["h"]["enum"] == ["x", "y"]
    assert {"type": "null"} in props["i"]["anyOf"]
    assert tool.validate({"a": "3", "b": 1, "c": "s", "d": True, "e": ["x"], "g": {}})["a"] == 3
    for bad, param in [({"b": 1}, "a"), ({"a": "x", "b": 1, "c": "", "d": 1, "e": [], "g": {}}, "a"),
                       ({"a": 1, "b": 1, "c": "", "d": True, "e": [], "g": {}, "zz": 1}, "zz")]:
        with pytest.raises(ToolArgumentError) as info:
            tool.validate(bad)
        assert info.value.param == param
    with pytest.raises(TypeError, match="needs a type hint"):
        Tool.from_function(lambda x: x, name="untyped", capabilities=None, plugin="t")


def test_entry_point_plugins_load_and_failures_are_isolated(kernel_with_plugins):
    info = {p["name"]: p for p in kernel_with_plugins.plugins_info()}
    assert info["myplug"]["version"] == "0.1" and info["myplug"]["error"] is None
    assert {"register_tools", "register_tasks", "register_commands", "prepare_prompt"} <= set(info["myplug"]["hooks"])
    assert "does_not_exist" in info["brokenplug"]["error"]
    assert "cannot register" in info["raisingplug"]["error"]
    assert {"calculator", "now", "weather", "slow", "boom"} <= set(kernel_with_plugins.tools.all())
    assert kernel_with_plugins.tools.get("weather").plugin == "myplug"


def test_llmos_plugins_empty_loads_none(site, monkeypatch):
    monkeypatch.setenv("LLMOS_PLUGINS", "")
    assert [n for n, _ in PluginManager().list_name_plugin()] == ["llmos.builtin", "llmos.tools", "llmos.nlp",
                                                                  "llmos.redaction"]


def test_tool_calls_capabilities_and_audit(kernel_with_plugins):
    k = kernel_with_plugins
    assert k.call_tool("weather", {"city": "Oslo", "unit": "f"}).value["temp"] == 70
    assert k.call_tool("calculator", {"expression": "2**10 - 24"}).value == 1000
    failed = k.call_tool("boom", {})
    assert not failed.ok and "kaboom" in failed.error
    slow = k.tools.call("slow", {"seconds": 2}, timeout=0.2)
    assert not slow.ok and "timed out" in slow.error
    with pytest.raises(ToolArgumentError, match="city is missing"):
        k.call_tool("weather", {})
    k.tools.grants.tools.pop("weather")  # revoke: now it needs approval
    with pytest.raises(ToolDeniedError, match="needs capability net"):
        k.call_tool("weather", {"city": "Oslo"}, owner="agent-7")
    asked = []
    approve = lambda tool, missing: asked.append((tool, set(missing))) or "once"  # noqa: E731
    assert k.call_tool("weather", {"city": "Oslo"}, approve=approve).ok
    assert k.call_tool("weather", {"city": "Oslo"}, approve=lambda *_: "always").ok
    assert k.call_tool("weather", {"city": "Oslo"}).ok  # "always" is remembered
    assert asked == [("weather", {"net"})]
    rows = k.tools.audit.read()
    denied = [r for r in rows if r["outcome"] == "denied"]
    assert denied and denied[0]["who"] == "agent-7" and denied[0]["tool"] == "weather"
    assert {r["outcome"] for r in rows} >= {"ok", "error", "denied", "invalid"}
    assert all({"ts", "who", "tool", "args", "decision", "outcome", "duration_s"} <= set(r) for r in rows)


def test_tasks_commands_and_lifecycle_hooks(kernel_with_plugins, tmp_path):
    import myplug

    k = kernel_with_plugins
    assert k.run_task("shout", {"text": "hi", "times": "2"}) == {"text": "HI HI "}
    with pytest.raises(ToolArgumentError, match="text is missing"):
        k.run_task("shout", {})
    assert k.tools.commands["hello"].handler(k, ["world"]) == "hello world"
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 32)
    c = k.chat([{"role": "user", "content": "hi"}], model=str(gguf), driver="fake", max_tokens=2)
    seen = [e for e in myplug.SEEN if e[0] in ("submitted", "finished")]
    assert seen == [("submitted", c.request_id), ("finished", c.request_id, "finished_length")]
    assert ("booted",) in myplug.SEEN


def test_prepare_prompt_rewrites_before_tokenization(kernel_with_plugins, tmp_path):
    k = kernel_with_plugins
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 32)
    h = k.submit("my password123 is", model=str(gguf), driver="fake", max_tokens=1)
    h.result(5)
    text = "".join(chr(t) for t in h.request.prompt_token_ids)
    assert "password123" not in text and "[redacted]" in text


# -- the CLI, as an outside author sees it ---------------------------------------------------------

def llmos_cli(site: Path, *args: str) -> subprocess.CompletedProcess:
    return run_llmos(*args, timeout=120, env={"PYTHONPATH": str(site), "LLMOS_PLUGINS": "myplug,brokenplug"})


@pytest.mark.cli
def test_cli_plugins_tools_tasks_and_commands(site):
    plugins = {p["name"]: p for p in json.loads(llmos_cli(site, "plugins", "--json").stdout)}
    assert set(plugins["myplug"]) == {"name", "version", "source", "hooks", "error"}
    assert plugins["myplug"]["error"] is None and plugins["brokenplug"]["error"]
    tools = {t["name"]: t for t in json.loads(llmos_cli(site, "tools", "--json").stdout)}
    w = tools["weather"]
    assert set(w) == {"name", "description", "schema", "capabilities", "plugin"}
    assert w["schema"]["required"] == ["city"] and w["capabilities"] == ["net"] and w["plugin"] == "myplug"
    r = llmos_cli(site, "tools", "call", "calculator", "--args", '{"expression": "6*7"}')
    assert r.returncode == 0 and json.loads(r.stdout)["value"] == 42
    for args, needle in [('{"expression": 5}', "expression"), ("{}", "expression is missing"),
                         ('{"expression": "1", "x": 2}', "x is not a parameter"), ("not json", "not valid JSON")]:
        r = llmos_cli(site, "tools", "call", "calculator", "--args", args)
        assert r.returncode == 2 and needle in r.stdout, (args, r.stdout, r.stderr)
    denied = llmos_cli(site, "tools", "call", "weather", "--args", '{"city": "Oslo"}')
    assert denied.returncode != 0 and "needs capability net" in denied.stdout
    r = llmos_cli(site, "task", "run", "shout", "--param", "text=hey", "--param", "times=2")
    assert r.returncode == 0 and json.loads(r.stdout) == {"text": "HEY HEY "}
    bad = llmos_cli(site, "task", "run", "shout", "--param", "times=many")
    assert bad.returncode == 2 and "text" in bad.stdout
    assert {"name", "description", "schema", "plugin"} <= set(json.loads(llmos_cli(site, "tasks", "--json").stdout)[0])
    assert llmos_cli(site, "hello", "outside", "author").stdout.strip() == "hello outside author"
    audit = json.loads(llmos_cli(site, "audit", "--json").stdout)
    assert any(r["tool"] == "weather" and r["outcome"] == "denied" for r in audit)


# -- MCP --------------------------------------------------------------------------------------------

MCP_SERVER = '''
from mcp.server.mcpserver import MCPServer

server = MCPServer("adder")


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


if __name__ == "__main__":
    server.run("stdio")
'''


def mcp_home(tmp_path, server_source: str, extra: str = ""):
    """An LLMOS_HOME whose llmos.toml runs `server_source` as MCP server "adder" (capability granted)."""
    script = tmp_path / "adder.py"
    script.write_text(server_source)
    home = tmp_path / "home"
    home.mkdir()
    (home / "llmos.toml").write_text(textwrap.dedent(f'''
        [capabilities.plugins]
        "mcp:adder" = ["mcp:adder"]
        [mcp.servers.adder]
        command = "{sys.executable}"
        args = ["{script}"]
    ''') + textwrap.dedent(extra))
    return home


def test_mcp_server_tools_are_mounted_and_called(tmp_path):
    home = mcp_home(tmp_path, MCP_SERVER, '''
        [mcp.servers.broken]
        command = "/nonexistent/mcp-server"
    ''')
    with llmos.boot(home=home, load_entrypoints=False) as k:
        tools = k.tools.all()
        assert "adder.add" in tools and tools["adder.add"].capabilities == {"mcp:adder"}
        assert tools["adder.add"].schema["required"] == ["a", "b"]
        assert "broken" in k.tools.mcp.errors and "failed to start" in k.tools.mcp.errors["broken"]
        result = k.call_tool("adder.add", {"a": 2, "b": 40})
        assert result.ok and str(result.value).strip("{}").endswith("42"), result
        with pytest.raises(ToolArgumentError):
            k.call_tool("adder.add", {"a": "two"})
        assert k.call_tool("calculator", {"expression": "1+1"}).value == 2  # the rest keeps working


@pytest.mark.model
def test_the_example_plugin_from_the_tutorial(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "examples" / "llmos-weather"))
    import llmos_weather

    pm = PluginManager(load_entrypoints=False)
    pm.register(llmos_weather, name="weather")
    (tmp_path / "llmos.toml").write_text('[capabilities.plugins]\nweather = ["net"]\n')
    with llmos.boot(home=tmp_path, plugins=pm) as kernel:
        assert kernel.call_tool("weather", {"city": "Paris"}).value["temperature"] == 13
        assert "no data" in kernel.call_tool("weather", {"city": "Atlantis"}).error
        result = kernel.run_task("forecast", {"city": "Paris", "days": 2})
        assert result["city"] == "Paris" and result["forecast"].strip()
        assert kernel.tools.commands["weather"].handler(kernel, ["Cairo"])["temperature"] == 23
