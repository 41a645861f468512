"""
What docs/design.rst and setup.cfg say about the code, checked over it (#9):
every third-party import is declared in setup.cfg, and every
``test-case-name`` marker names a test module that exists.
"""

from __future__ import annotations

import ast
import configparser
import os
import re
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: import name -> distribution name, where they differ
DISTRIBUTIONS = {
    "OpenSSL": "pyopenssl",
    "zope": "zope.interface",
    "prometheus_client": "prometheus-client",
    "psycopg_pool": "psycopg-pool",
    "botocore": "boto3",  # comes with boto3 (its Config and errors), declared with it
}


def _sources(*tops: str):
    for top in tops:
        for directory, _, files in os.walk(os.path.join(ROOT, top)):
            for name in sorted(files):
                if name.endswith(".py"):
                    yield os.path.join(directory, name)


def _third_party_imports() -> dict[str, str]:
    """top-level module -> one file importing it, over izreg/."""
    found: dict[str, str] = {}
    for path in _sources("izreg"):
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top != "izreg" and top not in sys.stdlib_module_names:
                    found.setdefault(top, os.path.relpath(path, ROOT))
    return found


def _declared() -> set[str]:
    parser = configparser.ConfigParser()
    parser.read(os.path.join(ROOT, "setup.cfg"))
    lines = parser["options"]["install_requires"].splitlines()
    return {re.split(r"[\[<>=!~ ]", line.strip(), maxsplit=1)[0].lower()
            for line in lines if line.strip() and not line.strip().startswith("#")}


def test_setup_cfg_declares_every_third_party_import():
    declared = _declared()
    missing = {module: path for module, path in _third_party_imports().items()
               if DISTRIBUTIONS.get(module, module).lower().replace("_", "-") not in declared}
    assert not missing, f"imported but not in setup.cfg install_requires: {missing}"


def test_test_case_name_markers_name_existing_modules():
    wrong = []
    for path in _sources("izreg", "bench"):
        with open(path, encoding="utf-8") as f:
            first = f.readline()
        marker = re.search(r"test-case-name:\s*([\w.,]+)", first)
        for name in marker.group(1).split(",") if marker else ():
            if not os.path.exists(os.path.join(ROOT, *name.split(".")) + ".py"):
                wrong.append(f"{os.path.relpath(path, ROOT)}: {name}")
    assert not wrong, f"test-case-name markers naming no test module: {wrong}"


def test_pytest_alone_is_the_quick_loop_and_a_path_or_selection_is_not():
    from types import SimpleNamespace

    from tests.conftest import quick_loop

    def config(source, markexpr="", keyword=""):
        return SimpleNamespace(args_source=source, option=SimpleNamespace(markexpr=markexpr, keyword=keyword))

    sources = pytest.Config.ArgsSource
    assert quick_loop(config(sources.TESTPATHS))
    assert not quick_loop(config(sources.ARGS))  # `pytest tests`: README's test command, every test
    assert not quick_loop(config(sources.TESTPATHS, markexpr="not docker"))
    assert not quick_loop(config(sources.TESTPATHS, keyword="oras"))


def test_ci_runs_the_readme_test_command():
    """.ci/run's command line is the README's test command, word for word (what CI installs is what users read)."""
    def command(path: str, indent: str) -> list[str]:
        with open(os.path.join(ROOT, path), encoding="utf-8") as f:
            return [line.strip() for line in f if line.startswith(indent + "apt-get update && apt-get install")]

    readme, ci = command("README.rst", "    "), command(".ci/run", "")
    assert len(readme) == 1 and len(ci) == 1, (readme, ci)
    assert readme == ci
    assert readme[0].endswith("python -m pytest tests")
    for needed in ("skopeo", "podman", "docker.io", "chromium", "postgresql", "haproxy"):
        assert needed in readme[0].split(), needed
