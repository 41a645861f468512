"""
The import rule of docs/design.rst ("Layers"), checked over every module of izreg/ with ast.

Arrows run one way: a module imports from its own layer or the layers below
it, never above; the HTTP layer reaches storage only through its interfaces
(izreg.storage.interfaces), everything else through the registry; and nothing
above the registry reaches through it into C{registry.index}.
"""

from __future__ import annotations

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: the layers, lowest first
LAYERS = ["core", "storage", "auth", "registry", "http", "service", "commands"]
#: module (or package) -> layer; a module is in the layer of its longest listed prefix
PLACES = {
    "izreg": "core",  # izreg/__init__.py: the version and StartupError
    "izreg.core": "core",
    "izreg.storage": "storage",
    "izreg.auth": "auth",
    "izreg.registry": "registry",
    "izreg.uploading": "registry",
    "izreg.browse": "registry",
    "izreg.inuse": "registry",
    "izreg.sweeper": "registry",
    "izreg.http": "http",
    "izreg.service": "service",
    "izreg.edge": "service",
    "izreg.tap": "service",
    "izreg.cli": "commands",
    "izreg.commands": "commands",
    "izreg.devices_cli": "commands",
    "izreg.manage_cli": "commands",
    "izreg.ops_cli": "commands",
    "izreg.db_cli": "commands",
    "izreg.devcerts": "commands",
}
#: what the HTTP layer may import from storage: the seam, not an implementation
HTTP_STORAGE = ("izreg.storage.interfaces",)
#: known exceptions: (importing module, imported module) -> why it stays for now
ALLOWED = {
    ("izreg.http.health", "izreg.storage.capacity"):
        "/readyz reads the disk floor the service built (DiskFloor); an interface would be one more file",
    ("izreg.http.errors", "izreg.storage.failures"):
        "a full disk or LMDB map is part of every store's contract: mapped to 507/503 where errors are rendered",
    ("izreg.http.sinks", "izreg.storage.failures"):
        "the body sink's write errors (ENOSPC) are answered before the handler runs",
}


def layer(module: str) -> str | None:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        place = PLACES.get(".".join(parts[:n]))
        if place is not None:
            return place
    return None


def modules(root: str):
    for directory, _, files in os.walk(os.path.join(root, "izreg")):
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                dotted = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
                yield dotted.removesuffix(".__init__"), path


def imports(module: str, tree: ast.AST, is_package: bool):
    """(imported module, line) for every import; C{from izreg import cli} names C{izreg.cli}."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield target, node.lineno
            for alias in node.names:
                if f"{target}.{alias.name}" in PLACES:
                    yield f"{target}.{alias.name}", node.lineno


def violations(root: str = ROOT) -> list[str]:
    found = []
    for module, path in modules(root):
        own = layer(module)
        where = os.path.relpath(path, root)
        if own is None:
            found.append(f"{where}: in no layer (add it to PLACES in tests/test_layers.py and to docs/design.rst)")
            continue
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        for target, line in imports(module, tree, path.endswith("__init__.py")):
            theirs = layer(target) if target == "izreg" or target.startswith("izreg.") else None
            if theirs is None or (module, target) in ALLOWED:
                continue
            if LAYERS.index(theirs) > LAYERS.index(own):
                found.append(f"{where}:{line}: {own} imports {target} ({theirs})")
            elif own == "http" and theirs == "storage" and not target.startswith(HTTP_STORAGE):
                found.append(f"{where}:{line}: http imports {target}: use the registry or izreg.storage.interfaces")
        if LAYERS.index(own) > LAYERS.index("registry"):
            for node in ast.walk(tree):
                if isinstance(node, ast.Attribute) and node.attr == "index" \
                        and isinstance(node.value, ast.Attribute) and node.value.attr == "registry":
                    found.append(f"{where}:{node.lineno}: {own} reaches through registry.index")
    return found


def test_arrows_run_one_way():
    assert violations() == []


@pytest.mark.parametrize("source, expected", [
    ("from izreg.http.errors import render_error\n", "storage imports izreg.http.errors (http)"),
    ("from ..service import config\n", "storage imports izreg.service (service)"),
    ("import izreg.auth.store\n", "storage imports izreg.auth.store (auth)"),
])
def test_an_upward_import_is_caught(tmp_path, source, expected):
    package = tmp_path / "izreg" / "storage"
    package.mkdir(parents=True)
    (tmp_path / "izreg" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "bad.py").write_text("from izreg.core import digest\nfrom . import paths\n" + source)
    assert violations(str(tmp_path)) == [f"izreg/storage/bad.py:3: {expected}"]


def test_http_reaches_storage_only_through_its_interfaces_and_never_through_registry_index(tmp_path):
    package = tmp_path / "izreg" / "http"
    package.mkdir(parents=True)
    (tmp_path / "izreg" / "__init__.py").write_text("")
    (package / "bad.py").write_text("from izreg.storage.interfaces import IBodySink\n"
                                    "from izreg.storage.uploads import ChunkWriter\n"
                                    "def f(self):\n    return self.registry.index.repo_exists('x')\n")
    assert violations(str(tmp_path)) == [
        "izreg/http/bad.py:2: http imports izreg.storage.uploads: use the registry or izreg.storage.interfaces",
        "izreg/http/bad.py:4: http reaches through registry.index",
    ]
