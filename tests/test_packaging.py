"""Packaging: pmcqa installs as one namespace, and the layer contract holds (import-linter)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_pip_install_puts_nothing_but_pmcqa_at_the_top_level(tmp_path: Path) -> None:
    # A fresh venv and `pip install .` as a user would run it (dependencies skipped: they do not change which
    # files pmcqa itself installs). Generic top-level names like `app` or `index` would collide with other
    # distributions.
    # The wheel is built by this venv's setuptools (what `pip install .` builds) from a copy of the sources,
    # so the build leaves no egg-info in the checkout; then it is installed into a fresh venv as pip installs
    # any wheel. PYTHONPATH is dropped so nothing outside that venv counts as installed.
    source = tmp_path / "src"
    shutil.copytree(REPO_ROOT / "pmcqa", source / "pmcqa", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, source / name)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "-w", str(wheels), str(source)],
        check=True, capture_output=True, timeout=300, env=env,
    )  # fmt: skip
    target = tmp_path / "venv"
    venv.create(target, with_pip=True)
    python = target / "bin" / "python"
    (wheel,) = wheels.glob("pmcqa-*.whl")
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)],
        check=True, capture_output=True, timeout=300, env=env,
    )  # fmt: skip
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    (dist_info,) = site.glob("pmcqa-*.dist-info")
    installed = [line.split(",")[0] for line in (dist_info / "RECORD").read_text().splitlines()]
    top_level = {path.split("/")[0] for path in installed if not path.startswith(("pmcqa-", "../"))}
    assert top_level == {"pmcqa"}, top_level
    for layer in ("app", "index", "ingest", "core"):
        assert f"pmcqa/{layer}/__init__.py" in installed
    assert not any((site / name).exists() for name in ("app", "index", "ingest"))


def test_layer_contract_holds() -> None:
    """app -> ingest -> index -> core, checked by import-linter on the real import graph."""
    result = subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout
