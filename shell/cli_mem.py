"""`llmos mem ...`: the memfs filesystem from the command line (kernel.mem underneath)."""

from __future__ import annotations

import json
import sys
import time
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from llmos.kernel.errors import InvalidRequestError

from .cli_common import err, fail, kernel_session, out

mem_app = typer.Typer(help="Retrieval memory as a filesystem (memfs).", no_args_is_help=True)
JSON = typer.Option(False, "--json", help="Print JSON.")


def _emit(value, as_json: bool, render) -> None:
    if as_json:
        typer.echo(json.dumps(value, indent=2, default=str))
    else:
        render(value)


@mem_app.command("write")
def write(path: str, file: Optional[str] = typer.Argument(None, help="A file to store, or - for stdin (default)."),
          tag: Optional[list[str]] = typer.Option(None, "--tag"), as_json: bool = JSON) -> None:
    """Create or replace a file with text from FILE or stdin."""
    text = sys.stdin.read() if file in (None, "-") else open(file, encoding="utf-8").read()
    with kernel_session(as_json) as kernel:
        info = kernel.mem.write(path, text, tags=tag or [], source=None if file in (None, "-") else file)
    _emit(info, as_json, lambda i: out.print(f"wrote {i['path']} ({i['size']} bytes, {i['chunks']} chunks)"))


@mem_app.command("append")
def append(path: str, text: str, as_json: bool = JSON) -> None:
    """Append text to a file (creating it)."""
    with kernel_session(as_json) as kernel:
        info = kernel.mem.append(path, text)
    _emit(info, as_json, lambda i: out.print(f"{i['path']}: {i['size']} bytes"))


@mem_app.command("cat")
def cat(path: str) -> None:
    """Print a file's text exactly as stored."""
    with kernel_session(False) as kernel:
        sys.stdout.write(kernel.mem.cat(path))


@mem_app.command("ls")
def ls(path: str = typer.Argument("/"), recursive: bool = typer.Option(False, "-R", "--recursive"),
       as_json: bool = JSON) -> None:
    """List a directory: files with sizes, directories with file counts."""
    with kernel_session(as_json) as kernel:
        entries = kernel.mem.ls(path, recursive)

    def render(rows):
        table = Table("path", "type", "size", "files")
        for e in rows:
            table.add_row(e["path"] + ("/" if e["type"] == "dir" else ""), e["type"], str(e["size"]),
                          str(e.get("files", "")) if e["type"] == "dir" else "")
        out.print(table)
    _emit(entries, as_json, render)


@mem_app.command("stat")
def stat(path: str, as_json: bool = JSON) -> None:
    """Metadata of a file or directory."""
    with kernel_session(as_json) as kernel:
        info = kernel.mem.stat(path)
    _emit(info, as_json, lambda i: out.print(json.dumps(i, indent=2, default=str)))


@mem_app.command("mv")
def mv(src: str, dst: str) -> None:
    """Move a file or a whole directory (no re-embedding)."""
    with kernel_session(False) as kernel:
        kernel.mem.mv(src, dst)


@mem_app.command("rm")
def rm(path: str, recursive: bool = typer.Option(False, "-r", "--recursive")) -> None:
    """Remove a file, or a directory with -r."""
    with kernel_session(False) as kernel:
        n = kernel.mem.rm(path, recursive)
    err.print(f"removed {n} file(s)")


@mem_app.command("find")
def find(query: str, within: str = typer.Option("/", "--in", help="Search this subtree only."),
         k: int = typer.Option(5, "-k"), as_json: bool = JSON) -> None:
    """Search by meaning: best matching chunk per file, best first."""
    with kernel_session(as_json) as kernel:
        hits = kernel.mem.find(query, within, k)

    def render(rows):
        for h in rows:
            out.print(f"[bold]{h['path']}[/]  {h['score']:.3f}\n  {h['text'][:200]!r}")
    _emit(hits, as_json, render)


@mem_app.command("grep")
def grep(pattern: str, within: str = typer.Option("/", "--in"), ignore_case: bool = typer.Option(False, "-i"),
         as_json: bool = JSON) -> None:
    """Search text with a regular expression."""
    with kernel_session(as_json) as kernel:
        hits = kernel.mem.grep(pattern, within, ignore_case)
    _emit(hits, as_json, lambda rows: [out.print(f"{h['path']}:{h['line']}: {h['text']}", highlight=False)
                                       for h in rows])


@mem_app.command("import")
def import_(source: str, to: str = typer.Option(..., "--to", help="Destination directory in memfs."),
            hidden: bool = typer.Option(False, "--hidden", help="Also import hidden files and directories (.name)."),
            max_bytes: Optional[int] = typer.Option(None, "--max-bytes", min=1,
                                                    help="Skip files larger than this (default: mem_import_max_bytes, "
                                                         "10 MiB)."),
            as_json: bool = JSON) -> None:
    """Import a directory of text files: SOURCE/a/b.txt becomes TO/a/b.txt.

    Symlinks leading out of SOURCE, hidden files (unless --hidden), files over the size limit and
    binary files are skipped; each one is listed with the reason."""
    bar = Progress(TextColumn("importing"), BarColumn(), MofNCompleteColumn(), console=err,
                   disable=as_json or not err.is_terminal)
    with bar, kernel_session(as_json) as kernel:
        task = bar.add_task("import", total=None)
        report = kernel.mem.import_dir(source, to, progress=lambda done, total: bar.update(task, completed=done,
                                                                                              total=total),
                                       hidden=hidden, max_bytes=max_bytes)

    def render(r) -> None:
        for s in r["skipped"]:
            err.print(f"skipped {s['path']}: {s['reason']}", highlight=False, markup=False)
        out.print(f"imported {r['imported']} file(s) into {r['to']}"
                  + (f", skipped {len(r['skipped'])}" if r["skipped"] else ""))
    _emit(report, as_json, render)


@mem_app.command("mount")
def mount(name: str) -> None:
    """Create a volume (its own store) mounted at /NAME."""
    with kernel_session(False) as kernel:
        out.print(f"mounted volume {name} at {kernel.mem.mount(name)}")


@mem_app.command("volumes")
def volumes(as_json: bool = JSON) -> None:
    """List volumes with their mount point, size and index kind."""
    with kernel_session(as_json) as kernel:
        rows = kernel.mem.volumes()

    def render(rs):
        table = Table("name", "mount", "files", "size", "chunks", "index")
        for r in rs:
            table.add_row(r["name"], r["mount"], str(r["files"]), str(r["size"]), str(r["chunks"]), r["index"])
        out.print(table)
    _emit(rows, as_json, render)


@mem_app.command("snapshot")
def snapshot(volume: str = typer.Argument(..., help="The volume (see `llmos mem volumes`; / is `root`)."),
             name: Optional[str] = typer.Argument(None, help="The snapshot's name (default: the time)."),
             delete: bool = typer.Option(False, "--delete", help="Delete snapshot NAME instead, freeing what only it kept."),
             as_json: bool = JSON) -> None:
    """Take a snapshot of VOLUME (copy-on-write: instant, no copy of the volume)."""
    if delete and name is None:
        raise fail(InvalidRequestError("--delete needs the snapshot's NAME", param="name"), as_json)
    with kernel_session(as_json) as kernel:
        if delete:
            kernel.mem.delete_snapshot(volume, name)
            info = {"deleted": name, "volume": volume}
        else:
            info = kernel.mem.snapshot(volume, name)
    _emit(info, as_json, lambda i: out.print(
        f"deleted snapshot {name} of {volume}" if delete else
        f"snapshot {i['name']} of {volume}: {i['files']} files, {i['chunks']} chunks"))


@mem_app.command("snapshots")
def snapshots(volume: Optional[str] = typer.Argument(None, help="Only this volume's."), as_json: bool = JSON) -> None:
    """List snapshots, oldest first."""
    with kernel_session(as_json) as kernel:
        rows = kernel.mem.snapshots(volume)

    def render(rs):
        table = Table("volume", "name", "taken", "files", "chunks", "size")
        for r in rs:
            table.add_row(r["volume"], r["name"], time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["created"])),
                          str(r["files"]), str(r["chunks"]), str(r["bytes"]))
        out.print(table if rs else "no snapshots")
    _emit(rows, as_json, render)


@mem_app.command("rollback")
def rollback(volume: str, name: str, as_json: bool = JSON) -> None:
    """Make VOLUME what it was at snapshot NAME (what was written since is gone unless another snapshot has it)."""
    with kernel_session(as_json) as kernel:
        info = kernel.mem.rollback(volume, name)
    _emit(info, as_json, lambda i: out.print(f"{volume} rolled back to {name}: {i['files']} files, {i['chunks']} chunks"))


@mem_app.command("fsck")
def fsck(repair: bool = typer.Option(False, "--repair"), as_json: bool = JSON) -> None:
    """Check each volume's index against its rows (and repair with --repair)."""
    with kernel_session(as_json) as kernel:
        reports = kernel.mem.fsck(repair)
    _emit(reports, as_json, lambda rs: [out.print(
        f"{r['volume']}: {r['rows']} chunks, {r['indexed']} indexed, {r['missing']} missing, "
        f"{r['orphaned']} orphaned{' — ' + '; '.join(r['notices']) if r['notices'] else ''}") for r in rs])
    if any(not r["consistent"] for r in reports) and not repair:
        raise typer.Exit(1)
