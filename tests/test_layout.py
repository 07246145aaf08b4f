"""The shape of the project itself: no import cycle, every package installed under the harness
namespace, and tests that share builders and fixtures rather than importing each other."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import grimp
import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]


def _import_graph() -> dict[str, set[str]]:
    """harness's modules and what each imports (grimp reads every import statement, those inside
    functions included); a package importing its own children is left out, as that is how a package
    exposes them, not a dependency."""
    graph = grimp.build_graph("harness", cache_dir=None)
    edges = {}
    for module in graph.modules:
        edges[module] = {
            imported
            for imported in graph.find_modules_directly_imported_by(module)
            if not imported.startswith(module + ".")
        }
    return edges


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    try:
        tuple(graphlib.TopologicalSorter(edges).static_order())
    except graphlib.CycleError as exc:
        return exc.args[1]
    return None


def test_no_module_imports_itself_in_a_circle():
    assert _cycle(_import_graph()) is None


def test_the_cycle_check_finds_a_cycle():
    edges = _import_graph()
    edges["harness.core.errors"] = edges["harness.core.errors"] | {"harness.engine.job"}
    cycle = _cycle(edges)
    assert cycle is not None and "harness.engine.job" in cycle and "harness.core.errors" in cycle


def test_every_package_is_installed_under_the_harness_namespace():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    on_disk = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for p in (ROOT / "harness").rglob("__init__.py")
        if "templates" not in p.parts
    }
    assert listed == on_disk  # a package missing here would be missing from a wheel
    assert all(name == "harness" or name.startswith("harness.") for name in listed)


def test_the_layer_contract_names_every_layer():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    [contract] = config["contracts"]
    layers = {name.strip() for layer in contract["layers"] for name in layer.split("|")}
    subpackages = {p.name for p in (ROOT / "harness").iterdir() if (p / "__init__.py").is_file()}
    assert layers == {f"harness.{name}" for name in subpackages}


def _test_modules() -> list[Path]:
    return sorted(p for p in (ROOT / "tests").rglob("*.py") if p.name.startswith("test_"))


@pytest.mark.parametrize("path", _test_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_test_module_imports_another_or_conftest(path):
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
    wrong = {m for m in imported if m.split(".")[-1].startswith("test_") or m.split(".")[-1] == "conftest"}
    assert not wrong, f"{path.name} imports {sorted(wrong)}: move shared code to tests/support.py or conftest.py"


def test_the_public_api_names_resolve_and_import_harness_stays_light():
    import subprocess
    import sys

    code = (
        "import sys, harness; assert 'torch' not in sys.modules;"
        " [getattr(harness, n) for n in harness.__all__]; print(sorted(harness.__all__))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "run_job" in out and "EVAL_BACKENDS" in out and "EXECUTORS" in out
