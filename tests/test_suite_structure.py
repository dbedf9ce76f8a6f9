"""The test suite's own layout: test modules share helpers through ``tests/support`` and fixtures
through ``conftest.py``, never by importing one another; every test folder is a package, so that
two folders may each hold a ``test_synthesis.py``."""

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def imported_modules(source: str, package: tuple[str, ...]) -> list[str]:
    """Every module ``source`` imports (relative imports resolved against ``package``), and for
    ``from M import name`` also ``M.name``, which may be a module."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[: len(package) - node.level + 1])
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            out += [module, *(f"{module}.{a.name}" for a in node.names)]
    return out


def forbidden_among(modules: list[str]) -> list[str]:
    """Those of ``modules`` that are a test module or a conftest of this suite."""
    return [
        m
        for m in modules
        if m.split(".")[0] == "tests"
        and any(p.startswith("test_") or p == "conftest" for p in m.split(".")[1:])
    ]


def test_no_module_of_the_suite_imports_a_test_module_or_a_conftest():
    offenders = []
    for path in sorted(TESTS.rglob("*.py")):
        package = path.relative_to(TESTS.parent).with_suffix("").parts[:-1]
        found = forbidden_among(imported_modules(path.read_text(), package))
        offenders += [f"{path.relative_to(TESTS.parent)}: {m}" for m in found]
    assert not offenders, (
        "shared helpers belong in tests/support, fixtures in a conftest.py:\n"
        + "\n".join(offenders)
    )


def test_the_import_check_catches_every_spelling():
    """The control: each way of importing another test module is caught, helpers are not."""
    package = ("tests", "assets")
    caught = {
        "from tests.assets.test_synthesis import pipeline": "tests.assets.test_synthesis",
        "from tests.assets import test_synthesis": "tests.assets.test_synthesis",
        "import tests.core.test_programs": "tests.core.test_programs",
        "from .test_refined_corpus import REFINE": "tests.assets.test_refined_corpus",
        "from ..deploy.test_deployment import postgres": "tests.deploy.test_deployment",
        "from tests.conftest import free_port": "tests.conftest",
        "def f():\n    from tests.test_suite_structure import TESTS": "tests.test_suite_structure",
    }
    for source, module in caught.items():
        assert module in forbidden_among(imported_modules(source, package)), source
    for source in (
        "from tests.support.pipeline import materialize",
        "from tests.support import servers",
        "from prox_assets.core import programs",
        "import pytest",
    ):
        assert not forbidden_among(imported_modules(source, package)), source


def test_every_test_folder_is_a_package():
    folders = {p.parent for p in TESTS.rglob("*.py")}
    assert not [f for f in folders if not (f / "__init__.py").exists()]


def test_the_executables_folder_comes_from_tests_support():
    """``BIN`` (the environment's executables, ``prox_assets.servers``'s) is imported from
    ``tests/support/paths.py``; no module works it out again or reaches for it elsewhere."""
    import re

    elsewhere = re.compile(
        r"Path\(sys\.executable\)\.parent|from prox_assets\.servers import .*\bBIN\b"
    )
    offenders = [
        str(path.relative_to(TESTS.parent))
        for path in sorted(TESTS.rglob("*.py"))
        if TESTS / "support" not in path.parents
        and path != Path(__file__).resolve()
        and elsewhere.search(path.read_text())
    ]
    assert not offenders, "import BIN from tests.support.paths:\n" + "\n".join(offenders)
