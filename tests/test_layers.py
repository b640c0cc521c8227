"""Import rules, checked over the source with ``ast`` (module-level, function-level and
``TYPE_CHECKING`` imports alike): plugins stand alone, only stores touch HDF5, and the
core is ordered in layers that import downward only."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Installed package of each source folder (pyproject.toml's package-dir).
PACKAGES = {"zooscope": "zooscope", "generators": "zooscope.generators",
            "stores": "zooscope.stores", "plugins": "zooscope.plugins"}
PLUGIN_PACKAGES = ("zooscope.generators", "zooscope.plugins")

#: The core in layers, bottom first (docs/design.md draws them). A module imports only
#: modules of lower layers, so no two core modules can import each other, in any
#: order or function body.
LAYERS: list[tuple[str, ...]] = [
    # foundations: no zooscope imports
    ("zooscope.errors", "zooscope.version", "zooscope.qa", "zooscope.synthetic",
     "zooscope.bootstrap", "zooscope.files", "zooscope.markdown"),
    ("zooscope.environment",),
    ("zooscope.extras",),
    ("zooscope.remote",),
    # the reader interface
    ("zooscope.zoo",),
    # progress reporting
    ("zooscope.progress",),
    # the store interface, models, data loading
    ("zooscope.store", "zooscope.models", "zooscope.data",
     "zooscope.search"),
    # the config
    ("zooscope.config",),
    # the plugin contracts
    ("zooscope.generator", "zooscope.analysis"),
    ("zooscope.hookspecs",),
    ("zooscope.registry",),
    # opening zoos (stores are plugins)
    ("zooscope.access",),
    ("zooscope.lineage", "zooscope.loader"),
    # what generators, analyzers and the commands build on
    ("zooscope.finetune", "zooscope.zoofile", "zooscope.evaluation", "zooscope.results",
     "zooscope.card"),
    ("zooscope.notebook",),
    # the engine
    ("zooscope.engine.stops", "zooscope.engine.resume", "zooscope.engine.tracking"),
    ("zooscope.engine.checks", "zooscope.engine.loop"),
    ("zooscope.engine.batchsize",),
    ("zooscope.engine.build",),
    ("zooscope.engine", "zooscope.report"),
    # the command line and the package's public face
    ("zooscope.commands", "zooscope.commands.common"),
    ("zooscope.commands.analyze", "zooscope.commands.generate", "zooscope.commands.plugins",
     "zooscope.commands.report", "zooscope.commands.zoo"),
    ("zooscope.cli",),
    ("zooscope", "zooscope.__main__"),
]


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


def core_modules() -> dict[str, Path]:
    return {name: path for name, path in modules().items()
            if plugin_of(name) is None and name not in PLUGIN_PACKAGES
            and not name.startswith("zooscope.stores")}


def core_imports(path: Path, module: str, known: dict[str, Path]) -> list[tuple[int, str]]:
    """The core modules a file imports: ``from zooscope import registry`` imports the
    module ``zooscope.registry``, ``from zooscope.zoo import Member`` the module
    ``zooscope.zoo``; a name that is not a module counts as its package."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module if path.name == "__init__.py" else module.rpartition(".")[0]
                parts = package.split(".")
                parent = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{parent}.{base}" if base else parent
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                     for a in node.names]
        else:
            continue
        for target in names:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != module:
                out.append((node.lineno, target))
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
    assert "zooscope.plugins.agreement" in found and "zooscope.stores.h5reader" in found
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


def test_every_core_module_has_a_layer() -> None:
    placed = [name for layer in LAYERS for name in layer]
    assert len(placed) == len(set(placed))
    assert sorted(core_modules()) == sorted(placed)


def test_the_core_imports_downward_only() -> None:
    """Each core module imports only modules of lower layers: the core has no cycles,
    hidden in function bodies or not."""
    level = {name: i for i, layer in enumerate(LAYERS) for name in layer}
    known = core_modules()
    problems = []
    for name, path in known.items():
        for line, target in core_imports(path, name, known):
            if level[target] >= level[name]:
                problems.append(f"{path.relative_to(ROOT)}:{line} imports {target} "
                                f"(layer {level[target]}) from layer {level[name]}")
    assert problems == []


def test_the_layer_check_sees_an_upward_import(tmp_path: Path) -> None:
    """The rule is not vacuous: an import from a lower layer up is found."""
    source = tmp_path / "zoo.py"
    source.write_text("def f():\n    from zooscope.registry import stores\n")
    targets = [target for _, target in core_imports(source, "zooscope.zoo", core_modules())]
    level = {name: i for i, layer in enumerate(LAYERS) for name in layer}
    assert "zooscope.registry" in targets
    assert level["zooscope.registry"] > level["zooscope.zoo"]
