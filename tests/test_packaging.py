"""Packaging: pmcqa installs as one namespace, the layer contract holds (import-linter), what is imported is
declared (and the reverse), torch is pinned by constraints.txt only, and there is one version string."""

from __future__ import annotations

import ast
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version
from typer.testing import CliRunner

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
    for migration_file in ("env.py", "script.py.mako", "versions/r0001_baseline.py"):  # alembic reads them
        assert f"pmcqa/core/migrations/{migration_file}" in installed
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

# --- declared dependencies ---------------------------------------------------------------------------------
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
# Declared but not imported by pmcqa, each for a reason; keep this short.
DECLARED_NOT_IMPORTED = {
    "accelerate": "transformers needs it to load with device_map= and 4-bit (the llm extra)",
    "fastapi-offline": "read as package data (importlib.resources), never imported: the offline docs assets",
    # torch.onnx.export(dynamo=True) imports them; onnx_backend only checks they are there, with a clear error
    "onnx": "torch's dynamo ONNX exporter writes the model with it (index/onnx_backend.py)",
    "onnxscript": "torch's dynamo ONNX exporter translates the graph with it (index/onnx_backend.py)",
}
# Imported but deliberately undeclared: probed with find_spec and used only when present (CUDA only).
OPTIONAL_UNDECLARED = {"unsloth"}


def requirement_names(texts: list[str]) -> set[str]:
    return {canonicalize_name(Requirement(text).name) for text in texts}


def third_party_imports() -> dict[str, set[str]]:
    """Top-level third-party modules imported anywhere in pmcqa (also inside functions) -> importing files."""
    found: dict[str, set[str]] = {}
    for path in (REPO_ROOT / "pmcqa").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top != "pmcqa" and top not in sys.stdlib_module_names and top != "__future__":
                    found.setdefault(top, set()).add(str(path.relative_to(REPO_ROOT)))
    return found


def distributions_of(module: str) -> set[str]:
    return {canonicalize_name(dist) for dist in importlib.metadata.packages_distributions().get(module, [])}


def test_every_import_is_declared_and_every_declaration_imported() -> None:
    project = PYPROJECT["project"]
    extras = {name: reqs for name, reqs in project["optional-dependencies"].items() if name != "dev"}
    declared = requirement_names(project["dependencies"]).union(*map(requirement_names, extras.values()))
    imported_dists: set[str] = set()
    for module, files in third_party_imports().items():
        if module in OPTIONAL_UNDECLARED:
            continue
        dists = distributions_of(module)
        assert dists, f"{module} (imported by {sorted(files)}) is not installed in the test environment"
        assert dists & declared, f"{module} is imported by {sorted(files)} but {dists} is not declared"
        imported_dists |= dists
    unused = declared - imported_dists - set(DECLARED_NOT_IMPORTED)
    assert not unused, f"declared but never imported: {sorted(unused)}"
    assert "python-multipart" not in declared  # POST /papers reads the raw body; no form parsing


def test_extras_table_matches_pyproject() -> None:
    """`core.extras.EXTRA_MODULES` (what a missing-extra message checks) names each extra's modules."""
    from pmcqa.core.extras import EXTRA_MODULES

    optional = PYPROJECT["project"]["optional-dependencies"]
    extras = {name: reqs for name, reqs in optional.items() if name != "dev"}
    assert set(EXTRA_MODULES) == set(extras)
    for extra, modules in EXTRA_MODULES.items():
        provided = set().union(*(distributions_of(module) for module in modules))
        assert provided == requirement_names(extras[extra]), extra


def test_torch_is_pinned_by_the_constraints_file_only() -> None:
    (torch,) = [r for r in map(Requirement, PYPROJECT["project"]["dependencies"]) if r.name == "torch"]
    assert not any(spec.operator == "==" for spec in torch.specifier)  # a GPU host chooses its build
    constraints = (REPO_ROOT / "constraints.txt").read_text().splitlines()
    pins = [line for line in constraints if line.startswith("torch")]
    assert pins == ["torch==2.13.0"]
    setup = (REPO_ROOT / "scripts" / "setup.sh").read_text()
    assert "-c constraints.txt" in setup and "constraints.txt | sha256sum" in setup  # the stamp covers it


def test_one_version_string() -> None:
    """pyproject reads pmcqa.__version__; the CLI and the API report it."""
    import pmcqa
    from pmcqa.app.cli import cli
    from pmcqa.app.main import create_app

    assert "version" not in PYPROJECT["project"] and PYPROJECT["project"]["dynamic"] == ["version"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "pmcqa.__version__"}
    assert Version(pmcqa.__version__)  # a valid PEP 440 version
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0 and result.output == f"pmcqa {pmcqa.__version__}\n"
    assert create_app().version == pmcqa.__version__


# The only places that import a pmcqa module inside a function, each for a reason stated there: the answer
# backends' lazy factories (transformers / openai are heavy and optional) and the PostgreSQL store (psycopg
# is an extra).
DEFERRED_OWN_IMPORTS = {
    ("pmcqa/app/answering/registry.py", "pmcqa.app.answering.transformers_backend"),
    ("pmcqa/app/answering/registry.py", "pmcqa.app.answering.openai_backend"),
    ("pmcqa/index/store.py", "pmcqa.index.pg_store"),
}


def _is_type_checking_block(node: ast.stmt) -> bool:
    return isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")


def test_own_modules_are_imported_at_the_top() -> None:
    """Imports of pmcqa's own modules sit at the top of the file (or under `if TYPE_CHECKING:`), so that the
    imports show how modules connect; only the listed, heavy-or-optional ones are deferred."""
    deferred = set()
    for path in sorted((REPO_ROOT / "pmcqa").rglob("*.py")):
        tree = ast.parse(path.read_text())
        top = {id(node) for node in tree.body}
        top |= {id(child) for node in tree.body if _is_type_checking_block(node) for child in node.body}
        for node in ast.walk(tree):
            if id(node) in top or not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            relative = isinstance(node, ast.ImportFrom) and node.level > 0
            for name in names:
                if relative or name.split(".")[0] == "pmcqa":
                    deferred.add((str(path.relative_to(REPO_ROOT)), name))
    assert deferred == DEFERRED_OWN_IMPORTS
