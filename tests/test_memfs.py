"""memfs against real FAISS and the real embedding model (all-MiniLM-L6-v2)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from llmos.kernel.errors import InvalidRequestError
from llmos.kernel.memfs import MemFS, MemNotFoundError, MemPathError
from llmos.kernel.memfs.paths import normalize

from .util import run_llmos

PLANTED = "/notes/meetings/budget.md"
PLANTED_TEXT = "The quarterly budget review with the finance team moved to Thursday at 3pm in room 12."


@pytest.mark.parametrize("bad", ["relative/path", "/a/../b", "/a/./b", "/a//b", "/a\x00b", "/a/\x07",
                                 "/" + "x" * 300, "", "/.."])
def test_bad_paths_are_rejected(bad):
    with pytest.raises(MemPathError):
        normalize(bad)


def test_paths_normalize():
    assert normalize("/a/b/") == "/a/b" and normalize("/") == "/" and normalize("//") == "/"


@pytest.fixture(scope="module")
def mem(tmp_path_factory):
    fs = MemFS(tmp_path_factory.mktemp("memfs"))
    from pydoc_data.topics import topics

    for name in sorted(topics)[:25]:
        fs.write(f"/python/{name}.txt", topics[name], tags=["pydoc"])
    fs.write(PLANTED, PLANTED_TEXT)
    yield fs
    fs.close()


@pytest.mark.model
def test_round_trips(mem):
    text = "Zürich notes — naïve café ☕\nline two\n"
    info = mem.write("/t/rt/a.md", text, tags=["x"])
    assert info["type"] == "file" and info["size"] == len(text.encode()) and info["tags"] == ["x"]
    assert mem.cat("/t/rt/a.md") == text
    mem.append("/t/rt/a.md", "more")
    assert mem.cat("/t/rt/a.md") == text + "more"
    mem.write("/t/rt/sub/b.md", "bee")
    rows = {e["path"]: e for e in mem.ls("/t/rt")}
    assert rows["/t/rt/a.md"]["type"] == "file" and rows["/t/rt/sub"]["type"] == "dir"
    assert rows["/t/rt/sub"]["files"] == 1 and rows["/t/rt/sub"]["size"] == 3
    assert "/t/rt/sub/b.md" in {e["path"] for e in mem.ls("/t/rt", recursive=True)}
    assert mem.stat("/t/rt")["files"] == 2
    mem.mv("/t/rt/sub/b.md", "/t/rt/c.md")
    assert mem.cat("/t/rt/c.md") == "bee"
    with pytest.raises(MemNotFoundError):
        mem.cat("/t/rt/sub/b.md")
    with pytest.raises(MemPathError, match="is a directory"):
        mem.rm("/t/rt")
    with pytest.raises(MemPathError, match="is a file"):
        mem.write("/t/rt/c.md/child", "x")
    with pytest.raises(MemPathError, match="is a directory"):
        mem.write("/t/rt", "x")
    with pytest.raises(MemPathError, match="exists already"):
        mem.mv("/t/rt/a.md", "/t/rt/c.md")
    assert mem.rm("/t/rt", recursive=True) == 2
    with pytest.raises(MemNotFoundError):
        mem.stat("/t/rt")


@pytest.mark.parametrize("query", ["when is the finance meeting about money rescheduled",
                                   "which room is the budget discussion in"])
@pytest.mark.model
def test_find_returns_the_planted_document_first(mem, query):
    hits = mem.find(query, k=5)
    assert hits[0]["path"] == PLANTED and hits[0]["text"].strip() == PLANTED_TEXT
    assert hits[0]["score"] > hits[1]["score"]
    assert all(h["path"].startswith("/python/") for h in mem.find(query, within="/python", k=3))


@pytest.mark.model
def test_move_keeps_search_without_reembedding_and_rm_removes_results(mem, monkeypatch):
    mem.write("/t/mv/doc.md", "Penguins live in the southern hemisphere and cannot fly.")
    calls = []
    embed = mem._embedder.embed
    monkeypatch.setattr(mem._embedder, "embed", lambda texts, **kw: calls.append(len(texts)) or embed(texts, **kw))
    mem.mv("/t/mv", "/t/moved")
    assert calls == []  # nothing re-embedded
    hit = mem.find("flightless birds of antarctica", k=1)[0]
    assert hit["path"] == "/t/moved/doc.md" and calls == [1]  # only the query
    mem.rm("/t/moved", recursive=True)
    assert all(not h["path"].startswith("/t/moved") for h in mem.find("flightless birds of antarctica", k=5))


@pytest.mark.model
def test_grep_and_volumes(mem):
    assert [h["path"] for h in mem.grep(r"room \d+", within="/notes")] == [PLANTED]
    mem.mount("project")
    mem.write("/project/plan.md", "Ship the memory filesystem by Friday.")
    assert mem.cat("/project/plan.md").startswith("Ship")
    vols = {v["name"]: v for v in mem.volumes()}
    assert vols["project"]["mount"] == "/project" and vols["project"]["files"] == 1
    assert (mem.root / "project" / "mem.sqlite").exists()
    assert mem.find("deadline for shipping", k=1)[0]["path"] == "/project/plan.md"
    mem.mv("/project/plan.md", "/notes/plan.md")  # across volumes: vectors travel along
    assert mem.cat("/notes/plan.md").startswith("Ship") and mem.find("deadline for shipping", k=1)[0]["path"] == \
        "/notes/plan.md"
    mem.rm("/notes/plan.md")


@pytest.mark.model
def test_a_pattern_that_backtracks_exponentially_is_refused_within_its_deadline(mem):
    mem.write("/redos/a.txt", "a" * 60 + "b\n")
    start = time.monotonic()
    with pytest.raises(InvalidRequestError, match="took over 0.5 s") as refused:
        mem.grep(r"(a|aa)+$", within="/redos", timeout=0.5)  # fib(60) ways to split the a's, none matching
    assert refused.value.param == "pattern" and time.monotonic() - start < 30  # years otherwise
    assert [h["line"] for h in mem.grep(r"a{60}b", within="/redos")] == [1]  # an ordinary one still matches
    mem.rm("/redos", recursive=True)


@pytest.mark.model
def test_corrupt_index_is_rebuilt(tmp_path):
    fs = MemFS(tmp_path)
    fs.write("/a.md", "Volcanoes erupt molten rock called lava.")
    fs.close()
    (tmp_path / "root" / "index.faiss").write_bytes(b"garbage, not an index")
    fs = MemFS(tmp_path)
    assert fs.find("lava from a mountain", k=1)[0]["path"] == "/a.md"
    report = fs.fsck()[0]
    assert report["consistent"] and any("rebuilt" in n for n in report["notices"])
    fs.close()


WRITER = r"""
import sys
import time
from llmos.kernel.memfs import MemFS
fs = MemFS(__import__("pathlib").Path(sys.argv[1]))
for i in range(10_000):
    fs.write(f"/bulk/doc{i}.md", f"document number {i}: " + "lorem ipsum dolor " * 20)
    print(f"ACK /bulk/doc{i}.md", flush=True)
"""


@pytest.mark.model
def test_kill_9_during_bulk_write_loses_nothing_acknowledged(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    acked = []
    for line in proc.stdout:
        acked.append(line.split()[1])
        if len(acked) >= 25:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    fs = MemFS(tmp_path)
    for path in acked:
        number = path.removeprefix("/bulk/doc").removesuffix(".md")
        assert fs.cat(path).startswith(f"document number {number}:")
    report = fs.fsck()[0]
    assert report["consistent"] and report["rows"] >= len(acked)
    assert fs.find("document number 7", within="/bulk", k=1)
    fs.close()


@pytest.mark.model
def test_another_process_sees_writes(tmp_path):
    fs = MemFS(tmp_path)
    fs.write("/x.md", "first")
    code = ("import sys, pathlib; from llmos.kernel.memfs import MemFS; "
            "f = MemFS(pathlib.Path(sys.argv[1])); f.write('/shared.md', 'Tigers are striped big cats.'); f.close()")
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True)
    assert fs.find("striped predators", k=1)[0]["path"] == "/shared.md"
    fs.close()


def test_index_kind_follows_size():
    from llmos.drivers.memfs_index import VectorIndex

    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(300, 16)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    ids = np.arange(300)
    small, large = VectorIndex.build(16, ids, vecs, threshold=1000), VectorIndex.build(16, ids, vecs, threshold=100)
    assert (small.kind, large.kind) == ("flat", "hnsw")
    assert small.search(vecs[5], 1)[0][0] == 5 and large.search(vecs[5], 1)[0][0] == 5
    large.remove(range(0, 100))
    assert large.needs_rebuild and all(i >= 100 for i, _ in large.search(vecs[5], 10))
    assert small.search(vecs[5], 3, subset=np.array([7, 8]))[0][0] in (7, 8)


# -- CLI and RAG ------------------------------------------------------------------------------------

def llmos(home: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return run_llmos(*args, stdin=stdin, env={"LLMOS_HOME": str(home)})


@pytest.mark.model
@pytest.mark.cli
def test_mem_cli_and_rag(tmp_path):
    home, notes = tmp_path / "home", tmp_path / "notes"
    (notes / "travel").mkdir(parents=True)
    (notes / "travel" / "paris.txt").write_text("The Eiffel tower in Paris was finished in 1889.")
    (notes / "bio.md").write_text("Photosynthesis turns light into chemical energy in plants.")
    (notes / "image.png").write_bytes(b"\x89PNG\x00\x01")
    r = llmos(home, "mem", "import", str(notes), "--to", "/notes", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["imported"] == 2
    ls = json.loads(llmos(home, "mem", "ls", "/notes", "-R", "--json").stdout)
    assert all({"path", "type", "size"} <= set(e) for e in ls)
    assert {(e["path"], e["type"]) for e in ls} >= {("/notes/travel", "dir"), ("/notes/travel/paris.txt", "file")}
    hits = json.loads(llmos(home, "mem", "find", "when was the famous tower built", "--json").stdout)
    assert hits[0]["path"] == "/notes/travel/paris.txt" and {"path", "score", "text"} <= set(hits[0])
    assert llmos(home, "mem", "cat", "/notes/travel/paris.txt").stdout == "The Eiffel tower in Paris was finished in 1889."
    assert llmos(home, "mem", "write", "/notes/new.md", stdin="piped text").returncode == 0
    assert llmos(home, "mem", "cat", "/notes/new.md").stdout == "piped text"
    for args in (["cat", "/nope"], ["cat", "/../etc/passwd"], ["rm", "/notes"], ["ls", "relative"]):
        bad = llmos(home, "mem", *args)
        assert bad.returncode != 0 and bad.stderr.startswith("error:"), args
    assert json.loads(llmos(home, "mem", "fsck", "--json").stdout)[0]["consistent"]
    answer = llmos(home, "run", "-t", "0", "--rag", "/notes", "When was the Eiffel tower finished?")
    assert answer.returncode == 0, answer.stderr
    assert "1889" in answer.stdout and "Sources: [/notes/travel/paris.txt]" in answer.stdout


@pytest.mark.model
def test_index_switches_kind_in_the_background(tmp_path, monkeypatch):
    import llmos.drivers.memfs_index as vi

    monkeypatch.setattr(vi, "HNSW_THRESHOLD", 3)
    fs = MemFS(tmp_path)
    for i, topic in enumerate(["rivers", "mountains", "deserts", "oceans", "forests"]):
        fs.write(f"/geo/{i}.md", f"Facts about {topic} and the animals living there.")
    vol, _, _ = fs.resolve("/geo")
    if vol.rebuild_thread is not None:
        vol.rebuild_thread.join(60)
    assert vol.index.kind == "hnsw" and len(vol.index) == 5
    assert fs.find("sand dunes", k=1)[0]["path"] == "/geo/2.md"
    fs.close()


@pytest.mark.model
def test_embedding_is_kernel_work_visible_in_ps(tmp_path):
    import threading

    import llmos

    with llmos.boot(home=tmp_path, load_entrypoints=False) as k:
        k.mem.write("/warm.md", "warm up the embedder")
        seen = []
        writer = threading.Thread(target=lambda: [k.mem.write(f"/bulk/{i}.md", "lorem ipsum " * 300)
                                                  for i in range(6)])
        writer.start()
        while writer.is_alive():
            seen += [r for r in k.ps() if r["driver"] == "embedder"]
        writer.join()
        assert seen and {r["model"] for r in seen} == {"all-minilm-l6-v2"}
        assert {r["state"] for r in seen} <= {"waiting", "running"}


@pytest.mark.model
def test_concurrent_appends_all_land_and_mv_never_nests_under_a_file(tmp_path):
    import threading

    fs = MemFS(tmp_path)
    threads = [threading.Thread(target=lambda n=n: [fs.append("/log.md", f"{n}-{i}\n") for i in range(4)])
               for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(fs.cat("/log.md").splitlines()) == sorted(f"{n}-{i}" for n in range(3) for i in range(4))
    fs.write("/b.txt", "file")
    with pytest.raises(MemPathError, match="is a file"):
        fs.mv("/log.md", "/b.txt/c.txt")
    fs.close()
