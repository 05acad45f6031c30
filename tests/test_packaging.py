"""Layout and packaging: the repo root is the `llmos` package, in editable and wheel installs;
importing the API loads no engine library (the sources of kernel/ import none: tests/test_layout.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENGINES = ("torch", "llama_cpp", "faiss", "transformers", "sentence_transformers")


def test_importing_the_api_loads_no_engine():
    code = ("import sys, llmos, llmos.kernel; "
            f"print([m for m in sys.modules if m.split('.')[0] in {ENGINES!r}])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_editable_install_maps_the_repo_root():
    import llmos

    assert Path(llmos.__file__).resolve() == ROOT / "__init__.py"


@pytest.mark.cli
def test_wheel_contains_and_installs_the_package(tmp_path):
    # built from a copy: setuptools reuses ./build/lib, where a package missing from pyproject survives
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "__pycache__",
                                                                "tests", "docs", "examples"))
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path), str(source)],
                   check=True, capture_output=True)
    wheel = next(tmp_path.glob("llmos-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = [p.parent.relative_to(ROOT) for p in ROOT.rglob("__init__.py")
                if not {"tests", "examples", "build", ".venv"} & set(p.relative_to(ROOT).parts)]
    assert len(packages) > 15
    for package in packages:  # every package of the tree (a wheel once lacked kernel/tenants and shell/client)
        assert f"{Path('llmos', package).as_posix()}/__init__.py" in names, f"the wheel lacks {package}"
    assert not any(n.startswith("llmos/tests/") for n in names)
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    code = "import llmos.kernel.kernel, llmos.shell.cli, llmos; print(llmos.__file__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(target)})
    assert out.stdout.strip().startswith(str(target))
