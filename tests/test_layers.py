"""Import rules, checked over the source with ``ast`` (module-level and function-level
imports alike): plugins stand alone, only stores touch HDF5."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Installed package of each source folder (pyproject.toml's package-dir).
PACKAGES = {"zooscope": "zooscope", "generators": "zooscope.generators",
            "stores": "zooscope.stores", "plugins": "zooscope.plugins"}
PLUGIN_PACKAGES = ("zooscope.generators", "zooscope.plugins")


def modules() -> dict[str, Path]:
    found = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            name = ".".join((package, *parts)).removesuffix(".__init__")
            found[name] = path
    return found


def imports(path: Path, module: str) -> list[tuple[int, str]]:
    """Every module an import statement in the file names, relative ones resolved."""
    out = []
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            out.append((node.lineno, base))
            out += [(node.lineno, f"{base}.{a.name}") for a in node.names]
    return out


def plugin_of(name: str) -> str | None:
    """The plugin module a module name lies in (``zooscope.plugins.agreement``), if any."""
    for package in PLUGIN_PACKAGES:
        if name.startswith(package + "."):
            return ".".join(name.split(".")[:3])
    return None


def test_the_rules_see_every_source_file() -> None:
    found = modules()
    assert "zooscope.generators.text_classification" in found
    assert "zooscope.plugins.agreement" in found and "zooscope.stores.h5zoo" in found
    assert imports(found["zooscope.plugins.agreement"], "zooscope.plugins.agreement")


def test_no_plugin_imports_another_plugin_or_a_store() -> None:
    """A generator or analyzer uses ``zooscope.*`` only: another plugin's module is not
    an API (its private helpers, ``_name`` modules of its own package, are)."""
    problems = []
    for name, path in modules().items():
        own = plugin_of(name)
        if own is None:
            continue
        for line, target in imports(path, name):
            other = plugin_of(target)
            private = other is not None and other.rpartition(".")[2].startswith("_") \
                and other.rpartition(".")[0] == own.rpartition(".")[0]
            if other is not None and other != own and not private:
                problems.append(f"{path.relative_to(ROOT)}:{line} imports {target} (a plugin)")
            if target == "zooscope.stores" or target.startswith("zooscope.stores."):
                problems.append(f"{path.relative_to(ROOT)}:{line} imports {target} (a store)")
    assert problems == []


def test_only_stores_import_h5py() -> None:
    problems = [f"{path.relative_to(ROOT)}:{line} imports {target}"
                for name, path in modules().items() if not name.startswith("zooscope.stores")
                for line, target in imports(path, name)
                if target == "h5py" or target.startswith("h5py.")]
    assert problems == []


def test_the_core_imports_no_plugin() -> None:
    """The core reaches plugins through the registry (entry points), never by import,
    so a plugin can be removed or replaced without touching the core."""
    problems = []
    for name, path in modules().items():
        if plugin_of(name) is not None or name.startswith("zooscope.stores"):
            continue
        for line, target in imports(path, name):
            if plugin_of(target) is not None:
                problems.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert problems == []
