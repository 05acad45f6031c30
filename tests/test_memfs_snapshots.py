"""memfs snapshots against real FAISS and the real embedding model: copy-on-write, rollback identity
(files, texts, metadata and search results, on the exact and on the HNSW index), crash safety."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import numpy as np
import pytest

from llmos.kernel.errors import InvalidRequestError
from llmos.kernel.memfs import MemFS, MemNotFoundError
from llmos.kernel.memfs.snapshots import SnapshotNotFoundError

QUERIES = ["how do for loops work", "exceptions and the try statement", "string formatting with format specs",
           "class definitions and inheritance", "lambda expressions", "the import system"]


def _topics(n: int) -> dict[str, str]:
    from pydoc_data.topics import topics

    return {f"/py/{name}.txt": topics[name][:2500] for name in sorted(topics)[:n]}


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """The real model's chunks and vectors of the documents, made once for the module (writes then
    store them without embedding again)."""
    fs = MemFS(tmp_path_factory.mktemp("prep"))
    vol = fs._volume("root")
    yield {path: vol.prepare(text) for path, text in _topics(24).items()}
    fs.close()


def _fill(fs: MemFS, embedded: dict, n: int, **meta) -> dict[str, str]:
    docs = _topics(n)
    for path, text in docs.items():
        fs.write(path, text, embedded=embedded[path], **meta)
    return docs


def _state(fs: MemFS) -> tuple:
    """Everything a user can observe: listing with metadata, every text, and search results with scores."""
    files = [e for e in fs.ls("/", recursive=True) if e["type"] == "file"]
    return (fs.ls("/", recursive=True), {e["path"]: (fs.cat(e["path"]), fs.stat(e["path"])) for e in files},
            [fs.find(q, k=8) for q in QUERIES], [fs.find(q, within="/py", k=3) for q in QUERIES])


def _churn(fs: MemFS, names: list[str]) -> None:
    """Every kind of change a snapshot must survive: new, overwritten, removed, moved files and a directory."""
    fs.write("/py/new.txt", "A new note about for loops, while loops and iteration over lists in Python.")
    fs.write(names[0], "This file was overwritten with unrelated text about gardening.")
    fs.rm(names[1])
    fs.mv(names[2], "/moved/elsewhere.txt")
    fs.write("/other/deep/file.md", "Lambda functions are small anonymous functions.")
    fs.append(names[3], "\nAn appended paragraph about exceptions.")


def _kept_rows(fs: MemFS, volume: str = "root") -> tuple[int, int]:
    db = fs._volume(volume).db
    return (db.execute("SELECT count(*) FROM kept_chunks").fetchone()[0],
            db.execute("SELECT count(*) FROM kept_texts").fetchone()[0])


@pytest.mark.model
@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_rollback_gives_identical_files_and_search_results(tmp_path, monkeypatch, kind, embedded):
    import llmos.drivers.memfs_index as vi

    if kind == "hnsw":  # the approximate index: a rollback must not answer from a graph grown since
        monkeypatch.setattr(vi, "HNSW_THRESHOLD", 10)
    fs = MemFS(tmp_path)
    docs = _fill(fs, embedded, 24, tags=["pydoc"])
    vol = fs._volume("root")
    if vol.rebuild_thread is not None:
        vol.rebuild_thread.join(120)
    assert vol.index.kind == kind
    before = _state(fs)
    info = fs.snapshot("root", "before-churn")
    assert (info["files"], info["name"], info["index_saved"]) == (len(docs), "before-churn", True)
    _churn(fs, list(docs))
    assert _state(fs) != before
    fs.rollback("root", "before-churn")
    assert _state(fs) == before
    assert fs.fsck()[0]["consistent"]
    fs.close()
    reopened = MemFS(tmp_path)  # and it stays so after a restart
    assert _state(reopened)[:2] == before[:2]
    assert [[h["path"] for h in r] for r in _state(reopened)[2]] == [[h["path"] for h in r] for r in before[2]]
    reopened.close()


@pytest.mark.model
def test_a_snapshot_copies_nothing_until_a_row_it_names_changes(tmp_path, embedded):
    fs = MemFS(tmp_path)
    docs = _fill(fs, embedded, 6)
    fs.snapshot("root", "s1")
    assert _kept_rows(fs) == (0, 0)  # copy-on-write: taking it copied no text and no vector
    fs.write("/py/unrelated.txt", "A file the snapshot never saw.")
    fs.rm("/py/unrelated.txt")
    assert _kept_rows(fs) == (0, 0)  # rows the snapshot does not name are never kept
    first = list(docs)[0]
    chunks = fs.stat(first)["chunks"]
    fs.write(first, "overwritten")
    assert _kept_rows(fs) == (chunks, 1)  # exactly the overwritten file's chunks and text
    fs.write(first, "overwritten again")
    assert _kept_rows(fs) == (chunks, 1)  # the intermediate version is nobody's: not kept
    fs.delete_snapshot("root", "s1")
    assert _kept_rows(fs) == (0, 0) and fs.snapshots() == []
    fs.close()


@pytest.mark.model
def test_snapshots_share_kept_rows_and_each_rolls_back_to_its_own_moment(tmp_path):
    fs = MemFS(tmp_path)
    fs.write("/a.md", "Volcanoes erupt molten rock called lava.")
    fs.snapshot("root", "one")
    state_one = _state(fs)
    fs.write("/b.md", "Glaciers are slow rivers of ice.")
    fs.write("/a.md", "Lava cools into basalt.")
    fs.snapshot("root", "two")
    state_two = _state(fs)
    fs.rm("/a.md")
    fs.rm("/b.md")
    fs.rollback("root", "one")
    assert _state(fs) == state_one
    fs.rollback("root", "two")  # rolling back is not one-way: a later snapshot still comes back
    assert _state(fs) == state_two
    fs.delete_snapshot("root", "two")
    fs.rollback("root", "one")  # what "one" needs survived deleting "two"
    assert _state(fs) == state_one
    assert [s["name"] for s in fs.snapshots()] == ["one"]
    fs.close()


@pytest.mark.model
def test_snapshots_are_per_volume(tmp_path):
    fs = MemFS(tmp_path)
    fs.mount("notes")
    fs.write("/notes/n.md", "Notes volume text about tea.")
    fs.write("/r.md", "Root volume text about coffee.")
    fs.snapshot("notes", "n1")
    fs.write("/notes/n.md", "changed")
    fs.write("/r.md", "root changed too")
    fs.rollback("notes", "n1")
    assert fs.cat("/notes/n.md") == "Notes volume text about tea." and fs.cat("/r.md") == "root changed too"
    assert [(s["volume"], s["name"]) for s in fs.snapshots()] == [("notes", "n1")]
    fs.close()


@pytest.mark.model
def test_bad_snapshot_requests_are_typed_errors_that_change_nothing(tmp_path):
    fs = MemFS(tmp_path)
    fs.write("/a.md", "text")
    for bad in ["", "../x", "a/b", ".hidden", "x" * 65, "name with spaces"]:
        with pytest.raises(InvalidRequestError, match="snapshot names"):
            fs.snapshot("root", bad)
    with pytest.raises(MemNotFoundError, match="no volume named 'nope'"):
        fs.snapshot("nope", "s")
    with pytest.raises(SnapshotNotFoundError, match="no snapshot named 'missing'"):
        fs.rollback("root", "missing")
    fs.snapshot("root", "s")
    with pytest.raises(InvalidRequestError, match="exists already"):
        fs.snapshot("root", "s")
    assert fs.cat("/a.md") == "text" and len(fs.snapshots()) == 1
    auto = fs.snapshot("root")  # no name: named by the time
    assert auto["name"] != "s" and len(fs.snapshots()) == 2
    fs.close()


@pytest.mark.model
def test_a_rollback_that_fails_midway_changes_nothing(tmp_path, monkeypatch, embedded):
    fs = MemFS(tmp_path)
    docs = _fill(fs, embedded, 4)
    fs.snapshot("root", "s")
    _churn(fs, list(docs))
    after = _state(fs)
    vol = fs._volume("root")
    original = vol.snaps._keep_texts

    def broken(*args):
        original(*args)
        raise OSError("disk went away")  # after chunk rows were already restored in the transaction

    monkeypatch.setattr(vol.snaps, "_keep_texts", broken)
    with pytest.raises(OSError):
        fs.rollback("root", "s")
    assert _state(fs) == after and fs.fsck()[0]["consistent"]
    fs.close()


CRASHER = r"""
import sys, pathlib
import llmos.drivers.memfs_index as vi
vi.HNSW_THRESHOLD = 6  # index rebuilds in the background while snapshots are taken
from llmos.kernel.memfs import MemFS
fs = MemFS(pathlib.Path(sys.argv[1]))
for i in range(10_000):
    fs.write(f"/f/{i}.md", f"file {i}: " + "facts about rivers and mountains " * (i % 5 + 1))
    fs.snapshot("root", f"s{i}")
    print(f"ACK {i}", flush=True)
    if i % 3 == 2:
        fs.rollback("root", f"s{i - 1}")
        fs.write(f"/f/{i}.md", f"file {i}: " + "facts about rivers and mountains " * (i % 5 + 1))
"""


@pytest.mark.model
def test_kill_9_during_snapshots_rollbacks_and_rebuilds_loses_nothing(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", CRASHER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    acked = 0
    for line in proc.stdout:
        acked = int(line.split()[1])
        if acked >= 14:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    fs = MemFS(tmp_path)
    assert fs.fsck()[0]["consistent"]
    names = {s["name"] for s in fs.snapshots()}
    assert {f"s{i}" for i in range(acked + 1)} <= names
    for i in (acked, acked // 2, 0):  # each acknowledged snapshot rolls back to exactly its files
        fs.rollback("root", f"s{i}")
        assert sorted(e["path"] for e in fs.ls("/f")) == sorted(f"/f/{j}.md" for j in range(i + 1))
        assert fs.find("rivers and mountains", within="/f", k=1)
    assert fs.fsck()[0]["consistent"]
    fs.close()


def test_a_tombstoned_id_comes_back_without_a_second_copy():
    from llmos.drivers.memfs_index import VectorIndex

    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(200, 16)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    index = VectorIndex.build(16, np.arange(200), vecs, threshold=50)
    assert index.kind == "hnsw"
    before = index.search(vecs[3], 10)
    index.remove([3, 4])
    assert 3 not in {i for i, _ in index.search(vecs[3], 10)}
    index.add(np.array([3, 4]), vecs[[3, 4]])
    assert index.search(vecs[3], 10) == before and index._index.ntotal == 200 and len(index) == 200


@pytest.mark.model
@pytest.mark.cli
def test_snapshot_cli(tmp_path):
    from .util import run_llmos

    env = {"LLMOS_HOME": str(tmp_path)}
    note = tmp_path / "n.md"
    note.write_text("Saturn has rings of ice.")
    assert run_llmos("mem", "write", "/n.md", str(note), env=env).returncode == 0
    made = run_llmos("mem", "snapshot", "root", "first", "--json", env=env)
    assert made.returncode == 0, made.stderr
    note.write_text("changed")
    run_llmos("mem", "write", "/n.md", str(note), env=env)
    listed = run_llmos("mem", "snapshots", "--json", env=env)
    assert [s["name"] for s in __import__("json").loads(listed.stdout)] == ["first"]
    back = run_llmos("mem", "rollback", "root", "first", env=env)
    assert back.returncode == 0 and "rolled back" in back.stdout
    assert run_llmos("mem", "cat", "/n.md", env=env).stdout == "Saturn has rings of ice."
    missing = run_llmos("mem", "rollback", "root", "nope", env=env)
    assert missing.returncode != 0 and "no snapshot named 'nope'" in missing.stderr
    assert run_llmos("mem", "snapshot", "root", "first", "--delete", env=env).returncode == 0
    assert "no snapshots" in run_llmos("mem", "snapshots", env=env).stdout
