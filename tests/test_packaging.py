"""The wheel a plain ``pip install .`` builds holds every module of the source tree, and the LICENSE.

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


def _local_build_tools() -> bool:
    """Whether the setuptools installed here can build a wheel by itself (from 70.1 on; before
    that it needs the ``wheel`` package)."""
    try:
        import setuptools
    except ImportError:
        return False
    version = tuple(int(part) for part in setuptools.__version__.split(".")[:2] if part.isdigit())
    return version >= (70, 1) or importlib.util.find_spec("wheel") is not None


def _build_wheel(src: Path, dist: Path) -> Path:
    """``pip wheel`` of ``src``: with the build tools installed here where they can build one
    (no download: the GPU machine has no network), else in pip's own isolated build environment,
    which pip fills from the indexes it is configured with. Skips, saying how to run the test,
    where neither works."""
    command = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(src)]
    if _local_build_tools():
        command.insert(-1, "--no-build-isolation")
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        if "--no-build-isolation" not in command and "setuptools" in done.stderr and "No matching distribution" in done.stderr:
            pytest.skip("pip cannot fetch setuptools to build the wheel (no network?); run this test after "
                        "pip install 'setuptools>=70.1' (or pip install wheel) in this environment")
        raise AssertionError(f"pip wheel failed:\n{done.stderr}")
    (wheel,) = dist.glob("rawgpu-*.whl")
    return wheel


def test_the_wheel_holds_every_module_and_data_file_and_the_license(tmp_path):
    src = tmp_path / "src"
    # A copy, so the build leaves no build/ folder in the repository.
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "tests", "bench"))
    with zipfile.ZipFile(_build_wheel(src, tmp_path / "dist")) as whl:
        names = set(whl.namelist())
        # setuptools puts the project's LICENSE in the metadata folder (.dist-info/ or its licenses/).
        licenses = [n for n in names if ".dist-info/" in n and n.endswith("/LICENSE")]
        assert licenses, f"the wheel has no LICENSE in its .dist-info: {sorted(n for n in names if '.dist-info/' in n)}"
        assert whl.read(licenses[0]) == (ROOT / "LICENSE").read_bytes()
    missing = sorted(_expected_files() - names)
    assert not missing, f"the wheel lacks {missing}"
