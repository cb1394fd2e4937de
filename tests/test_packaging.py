"""The wheel a plain ``pip install .`` builds holds every module of the source tree.

Editable installs read the source folders directly and hide a package left out of the wheel:
``rawgpu.backends`` once was, and ``rawgpu train`` died with ModuleNotFoundError after a plain
install. (CI also installs the built wheel into a fresh environment and trains with it.)
"""

import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _expected_files() -> set:
    """Every Python file and data file the package must ship, as named inside the wheel."""
    want = {f"rawgpu/{p.relative_to(ROOT / 'rawgpu').as_posix()}" for p in (ROOT / "rawgpu").rglob("*.py")}
    want |= {f"rawgpu/kernels/{p.relative_to(ROOT / 'kernels').as_posix()}" for p in (ROOT / "kernels").rglob("*.py")}
    want |= {f"rawgpu/kernels/{p.relative_to(ROOT / 'kernels').as_posix()}" for p in (ROOT / "kernels").rglob("*.json")}
    want |= {f"rawgpu/data/sample/{p.name}" for p in (ROOT / "rawgpu" / "data" / "sample").iterdir()}
    return {name for name in want if "__pycache__" not in name}


def _why_no_wheel_build() -> str | None:
    """Why this environment cannot build a wheel without build isolation (None: it can).

    Without isolation (no download of build tools: the GPU machine has no network) pip builds
    with the setuptools installed here, which makes wheels by itself from 70.1 on and needs the
    ``wheel`` package before that."""
    try:
        import setuptools
    except ImportError:
        return "setuptools is not installed"
    version = tuple(int(part) for part in setuptools.__version__.split(".")[:2] if part.isdigit())
    if version < (70, 1) and importlib.util.find_spec("wheel") is None:
        return f"setuptools {setuptools.__version__} needs the wheel package to build wheels (pip install wheel)"
    return None


def test_the_wheel_holds_every_module_and_data_file(tmp_path):
    why = _why_no_wheel_build()
    if why:
        pytest.skip(why)
    src = tmp_path / "src"
    # A copy, so the build leaves no build/ folder in the repository.
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "tests", "bench"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src)],
        check=True, capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("rawgpu-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = sorted(_expected_files() - names)
    assert not missing, f"the wheel lacks {missing}"
