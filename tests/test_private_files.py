"""$LLMOS_HOME holds conversations, keys and memory: under a permissive umask no other local user can
read them (the home is 0700, the session database and its WAL files 0600)."""

from __future__ import annotations

import os
import stat

import pytest

import llmos


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("existing", [False, True], ids=["new home", "existing 0755 home"])
def test_the_home_and_the_session_database_are_private_under_umask_022(tmp_path, umask_022, existing):
    home = tmp_path / "home"
    if existing:
        home.mkdir(mode=0o755)
        os.chmod(home, 0o755)
        (home / "sessions.db").touch()
        os.chmod(home / "sessions.db", 0o644)
    kernel = llmos.boot(home=home, load_entrypoints=False)
    try:
        kernel.sessions.create(name="diary", owner="alice")  # a write: the WAL files exist now
        assert _mode(home) == 0o700
        db = [home / "sessions.db", home / "sessions.db-wal", home / "sessions.db-shm"]
        assert all(p.exists() for p in db) and {_mode(p) for p in db} == {0o600}, [oct(_mode(p)) for p in db]
    finally:
        kernel.shutdown()
