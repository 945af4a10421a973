"""pmcqa installs and runs from a fresh virtual environment: without extras, and with every dependency at its
declared lower bound. Both run `scripts/install_smoke.py` (its docstring says what each mode checks); the
venvs are cached per dependency declaration, so only a change of pyproject.toml or constraints.txt pays for a
full install (minutes). A package index that cannot be reached skips these tests with pip's words.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = REPO_ROOT / "scripts" / "install_smoke.py"
INDEX_UNREACHABLE = 3


def run_smoke(mode: str) -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), mode], cwd=REPO_ROOT, capture_output=True, text=True, timeout=1700
    )
    output = result.stdout + result.stderr
    if result.returncode == INDEX_UNREACHABLE:
        pytest.skip(f"package index unreachable, cannot build the {mode} venv: {output[-1500:]}")
    assert result.returncode == 0, output[-8000:]
    assert f"install smoke ({mode}) passed" in result.stdout


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_pip_install_without_extras_serves_extractive_answers() -> None:
    """`pip install .` (no extras): `pmcqa serve` answers /healthz and /ask; extras are named when missing."""
    run_smoke("plain")


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_lowest_declared_versions_pass_the_dependency_tests() -> None:
    """Every direct dependency (core and extras) at its lower bound: the service and the dependency tests."""
    run_smoke("lowest")


def smoke_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("install_smoke", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(sys.modules[spec.name])
    return sys.modules[spec.name]


def test_lower_bounds_take_the_highest_floor_and_refuse_open_or_contradictory_requirements() -> None:
    smoke, req = smoke_module(), Requirement
    bounds = smoke.lower_bounds([req("a>=1.0"), req("a>=2.0,<3"), req("b==0.5"), req("t>=2.2")], {"t"})
    assert bounds == {"a": Version("2.0"), "b": Version("0.5")}  # t is pinned by constraints.txt instead
    with pytest.raises(smoke.CheckFailed, match="declares no lower bound"):
        smoke.lower_bounds([req("c<2")], set())
    with pytest.raises(smoke.CheckFailed, match="excludes a==2"):
        smoke.lower_bounds([req("a>=2"), req("a>=1,<2")], set())


def test_every_declared_dependency_has_a_floor_the_lowest_run_pins() -> None:
    smoke = smoke_module()
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    extras = smoke.MODES["lowest"].extras
    assert set(extras) == set(project["optional-dependencies"]) - {"dev"}  # every extra's floors are tried
    bounds = smoke.lower_bounds(smoke.declared_requirements(extras), smoke.constraint_pins())
    declared = {canonicalize_name(Requirement(text).name) for text in project["dependencies"]}
    for extra in extras:
        declared |= {canonicalize_name(Requirement(t).name) for t in project["optional-dependencies"][extra]}
    assert set(bounds) == declared - {"torch"}  # torch: constraints.txt's pin
