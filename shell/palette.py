"""The command palette (ctrl+p): every shell command, built-in and from plugins. Picking one that
takes no argument runs it; otherwise its name goes into the prompt to finish typing.

The provider sees its app only as a `PaletteHost` (its command set and `pick_command`), so this
module does not import shell/app.py, which imports it."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Protocol, cast

from textual.command import DiscoveryHit, Hit, Hits, Provider

if TYPE_CHECKING:
    from .commands import CommandSet


class PaletteHost(Protocol):
    """What the palette needs of the shell app."""

    commands: CommandSet | None

    def pick_command(self, name: str, runnable: bool) -> None: ...


class ShellCommandsProvider(Provider):
    def _entries(self) -> list[tuple[str, str, bool]]:
        app = cast(PaletteHost, self.app)
        if app.commands is None:
            return []
        return [(f"/{c.name}", c.help + (f" (plugin {c.plugin})" if c.plugin else ""), " " not in c.usage)
                for c in app.commands.commands.values()]

    def _pick(self, name: str, runnable: bool) -> None:
        cast(PaletteHost, self.app).pick_command(name, runnable)

    async def discover(self) -> Hits:
        for name, help_text, runnable in self._entries():
            yield DiscoveryHit(name, partial(self._pick, name, runnable), help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for name, help_text, runnable in self._entries():
            score = matcher.match(f"{name} {help_text}")
            if score > 0:
                yield Hit(score, matcher.highlight(name), partial(self._pick, name, runnable), help=help_text)
