"""Layout rules, checked on the import graph of the package read from source (ast: nothing is imported).

- no import cycle anywhere (module level, TYPE_CHECKING and function-level imports alike);
- nothing inside kernel/ imports the facade (kernel/kernel.py, or the kernel package that re-exports
  it); proc/ and tools/ get a `KernelPort` (kernel/port.py) instead;
- each part of kernel/ imports only the parts below it (`KERNEL_LAYERS`, as its `__init__` says);
- kernel/ never imports an engine library (torch, llama_cpp, faiss, transformers, sentence_transformers);
- one import style: relative inside a top-level package, `llmos.X` across packages.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP = {"tests", "build", "docs", "examples", "__pycache__"}
ENGINES = ("torch", "llama_cpp", "faiss", "transformers", "sentence_transformers")

#: part of kernel/ -> the parts it may import (the facade, "kernel", may import them all)
KERNEL_LAYERS = {
    "errors": set(),
    "lib": {"errors"},
    "sched": {"errors"},
    "config": {"errors", "sched", "lib", "alerts"},  # alerts: its rule parser, so bad rules fail Config.load
    "alerts": {"errors", "lib"},
    "models": {"errors", "config", "sched", "lib"},
    "modules": {"errors", "lib", "sched", "models"},
    "memfs": {"errors", "lib", "sched"},
    "tools": {"errors", "lib", "config", "port"},
    "proc": {"errors", "lib", "sched", "port"},
    "tenants": {"errors", "sched", "memfs"},  # memfs: its path rules only
    "port": {"sched", "tools", "proc"},  # types only (TYPE_CHECKING)
    "api": {"sched"},  # types only (TYPE_CHECKING)
}


@dataclass(frozen=True)
class Edge:
    source: str
    target: str  # a module of the package, or the imported name as written when outside it
    line: int
    written: str  # "from ..errors import" as in the source


def module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join(["llmos", *parts])


def modules(root: Path = ROOT) -> dict[str, Path]:
    found = {}
    for path in root.rglob("*.py"):
        rel = path.relative_to(root).parts
        if any(p in SKIP or p.startswith(".") for p in rel[:-1]):
            continue
        found[module_name(path, root)] = path
    return found


def edges(mods: dict[str, Path]) -> list[Edge]:
    out = []
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [(a.name, f"import {a.name}") for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                written = f"from {'.' * node.level}{base} import"
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
                targets = [(base, written)] + [(f"{base}.{a.name}", written) for a in node.names]
            else:
                continue
            for target, written in targets:
                resolved = target
                while resolved and resolved not in mods:
                    resolved = resolved.rpartition(".")[0]
                if resolved in ("", "llmos") and target.split(".")[0] != "llmos":
                    out.append(Edge(name, target, node.lineno, written))  # outside the package
                elif resolved and resolved not in (name, "llmos"):
                    out.append(Edge(name, resolved, node.lineno, written))
    return out


def cycles(mods: dict[str, Path], graph_edges: list[Edge]) -> list[list[str]]:
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for e in graph_edges:
        if e.target in mods:
            graph[e.source].add(e.target)
    state: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(u: str) -> None:
        state[u] = 1
        stack.append(u)
        for v in sorted(graph[u]):
            if state.get(v) == 1:
                found.append(stack[stack.index(v):] + [v])
            elif v not in state:
                visit(v)
        stack.pop()
        state[u] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    return found


def kernel_part(module: str) -> str | None:
    """`llmos.kernel.sched.engine` -> "sched"; `llmos.kernel.errors` -> "errors"; None outside kernel/."""
    parts = module.split(".")
    if parts[:2] != ["llmos", "kernel"]:
        return None
    return parts[2] if len(parts) > 2 else "__init__"


def violations(root: Path = ROOT) -> list[str]:
    """Every broken rule, one line each (empty when the layout is sound)."""
    mods = modules(root)
    graph_edges = edges(mods)
    problems = [f"import cycle: {' -> '.join(c)}" for c in cycles(mods, graph_edges)]
    for e in graph_edges:
        where = f"{mods[e.source].relative_to(root)}:{e.line}"
        src, dst = kernel_part(e.source), kernel_part(e.target)
        if src not in (None, "__init__") and e.target in ("llmos.kernel", "llmos.kernel.kernel") and src != "kernel":
            problems.append(f"{where}: imports the kernel facade ({e.written} ...): use the KernelPort")
        if src in KERNEL_LAYERS and dst in KERNEL_LAYERS and dst != src and dst not in KERNEL_LAYERS[src]:
            problems.append(f"{where}: kernel/{src} must not import kernel/{dst} ({e.written} ...)")
        if src is not None and e.target.split(".")[0] in ENGINES:
            problems.append(f"{where}: kernel/ imports the engine library {e.target}")
        if e.target in mods or e.target.startswith("llmos."):
            top_src, top_dst = e.source.split(".")[:2], e.target.split(".")[:2]
            relative = e.written.startswith("from .")
            if e.source != "llmos" and len(top_src) == 2 and top_src == top_dst and not relative:
                problems.append(f"{where}: inside {'.'.join(top_src)} import relatively, not {e.written}")
            if relative and len(top_src) == 2 and top_src != top_dst:
                problems.append(f"{where}: across packages import llmos.X, not {e.written}")
    return sorted(set(problems))


def test_layout_rules_hold():
    assert violations() == []


def test_each_kernel_part_says_what_it_owns_and_must_not_import():
    for init in sorted((ROOT / "kernel").glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))) or ""
        assert "Owns:" in doc and "Must not import:" in doc, f"{init.relative_to(ROOT)} docstring"
        assert init.parent.name in KERNEL_LAYERS, f"kernel/{init.parent.name} has no row in KERNEL_LAYERS"


def test_each_rule_catches_its_violation(tmp_path):
    """The checker on a copy of the package with one bad import per rule."""
    import shutil

    copy = tmp_path / "llmos"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(*SKIP, ".*"))
    bad = {
        "kernel/sched/detokenizer.py": ("from ..kernel import Kernel", "imports the kernel facade"),
        "kernel/proc/structured.py": ("from .. import Config", "imports the kernel facade"),
        "kernel/sched/interface.py": ("from ..models.registry import ModelSpec", "kernel/sched must not import"),
        "kernel/tools/jobs.py": ("import torch", "engine library torch"),
        "kernel/memfs/paths.py": ("from llmos.kernel.errors import LlmosError", "import relatively"),
        "shell/palette.py": ("from ..kernel.errors import LlmosError", "across packages"),
        "kernel/errors.py": ("from .sched.request import Priority", "import cycle"),
    }
    for rel, (line, expected) in bad.items():
        path = copy / rel
        original = path.read_text(encoding="utf-8")
        path.write_text(original + f"\n{line}\n", encoding="utf-8")
        try:
            found = violations(copy)
            assert any(expected in p for p in found), (rel, line, found)
        finally:
            path.write_text(original, encoding="utf-8")
    assert violations(copy) == []
