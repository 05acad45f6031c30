"""The memfs browser: a tree of volumes and directories (`kernel.mem.ls`), a preview of the selected
file (`kernel.mem.cat`) and a search box whose ranked results (`kernel.mem.find`) open on select."""

from __future__ import annotations

from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Header, Input, OptionList, Static, Tree
from textual.widgets.option_list import Option
from textual.widgets.tree import TreeNode

from llmos.kernel.errors import LlmosError


class MemfsScreen(Screen):
    DEFAULT_CSS = """
    MemfsScreen #mem-search { margin: 0 1; }
    MemfsScreen #mem-results { height: auto; max-height: 8; margin: 0 1; display: none; }
    MemfsScreen #mem-results.shown { display: block; }
    MemfsScreen #mem-tree { width: 30; min-width: 20; border-right: solid $primary 50%; }
    MemfsScreen #mem-preview-box { width: 1fr; padding: 0 1; }
    MemfsScreen #mem-preview-title { text-style: bold; color: $accent; }
    MemfsScreen .error { color: $text-error; }
    """

    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("ctrl+f", "focus_search", "Search"),
        Binding("g", "reload", "Refresh", show=False),
    ]

    def __init__(self, kernel: Any) -> None:
        super().__init__()
        self.kernel = kernel
        self.previewed: str | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        yield Input(placeholder="search memory by meaning (enter)", id="mem-search")
        yield OptionList(id="mem-results")
        with Horizontal():
            tree: Tree[str] = Tree("/", data="/", id="mem-tree")
            tree.show_root = True
            yield tree
            with Vertical(id="mem-preview-box"):
                yield Static("", id="mem-preview-title")
                with VerticalScroll():
                    yield Static("select a file", id="mem-preview", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = "memfs"
        self.query_one("#mem-tree", Tree).focus()
        self.action_reload()

    def action_reload(self) -> None:
        tree = self.query_one("#mem-tree", Tree)
        tree.root.remove_children()
        self._load(tree.root, "/")
        tree.root.expand()

    def action_back(self) -> None:
        results = self.query_one("#mem-results", OptionList)
        if results.has_class("shown"):
            results.remove_class("shown")
            return
        self.app.pop_screen()

    def action_focus_search(self) -> None:
        self.query_one("#mem-search", Input).focus()

    # -- tree --------------------------------------------------------------------------------------

    @work(thread=True, group="mem-ls")
    def _load(self, node: TreeNode, path: str) -> None:
        try:
            entries = self.kernel.mem.ls(path)
        except (LlmosError, OSError) as exc:
            self.app.call_from_thread(self._show_error, str(exc))
            return
        self.app.call_from_thread(self._fill, node, entries)

    def _fill(self, node: TreeNode, entries: list[dict[str, Any]]) -> None:
        node.remove_children()
        for e in entries:
            name = e.get("name") or e["path"].rsplit("/", 1)[-1]
            if e["type"] == "dir":
                node.add(name + "/", data=e["path"], allow_expand=True)
            else:
                node.add_leaf(name, data=e["path"])
        if not entries and node.is_root:
            node.add_leaf("(empty: /write or `llmos mem import` add files)", data=None)

    @on(Tree.NodeExpanded, "#mem-tree")
    def _expanded(self, event: Tree.NodeExpanded) -> None:
        if event.node is not event.node.tree.root and event.node.data:
            self._load(event.node, event.node.data)

    @on(Tree.NodeSelected, "#mem-tree")
    def _selected(self, event: Tree.NodeSelected) -> None:
        if event.node.data and not event.node.allow_expand:
            self.preview(event.node.data)

    # -- preview and search ------------------------------------------------------------------------

    @work(thread=True, group="mem-cat", exclusive=True)
    def preview(self, path: str) -> None:
        try:
            text = self.kernel.mem.cat(path)
        except (LlmosError, OSError) as exc:
            self.app.call_from_thread(self._show_error, str(exc))
            return
        self.app.call_from_thread(self._show, path, text)

    def _show(self, path: str, text: str) -> None:
        self.previewed = path
        self.query_one("#mem-preview-title", Static).update(path)
        preview = self.query_one("#mem-preview", Static)
        preview.remove_class("error")
        preview.update(text)

    def _show_error(self, message: str) -> None:
        preview = self.query_one("#mem-preview", Static)
        preview.add_class("error")
        preview.update(message)

    @on(Input.Submitted, "#mem-search")
    def _search(self, event: Input.Submitted) -> None:
        if event.value.strip():
            self.query_one("#mem-preview-title", Static).update(f"searching {event.value!r}...")
            self.search(event.value.strip())

    @work(thread=True, group="mem-find", exclusive=True)
    def search(self, query: str) -> None:
        try:
            hits = self.kernel.mem.find(query, k=10)
        except (LlmosError, OSError) as exc:
            self.app.call_from_thread(self._show_error, str(exc))
            return
        self.app.call_from_thread(self._results, query, hits)

    def _results(self, query: str, hits: list[dict[str, Any]]) -> None:
        results = self.query_one("#mem-results", OptionList)
        results.clear_options()
        for h in hits:
            snippet = " ".join(str(h.get("text", "")).split())[:50]
            results.add_option(Option(f"{h['score']:.2f} {h['path']}  {snippet}", id=h["path"]))
        if not hits:
            results.add_option(Option(f"no matches for {query!r}", disabled=True))
        results.add_class("shown")
        results.highlighted = 0
        self.query_one("#mem-preview-title", Static).update(f"{len(hits)} results for {query!r}")
        results.focus()

    @on(OptionList.OptionSelected, "#mem-results")
    def _open_result(self, event: OptionList.OptionSelected) -> None:
        if event.option.id:
            self.preview(event.option.id)
