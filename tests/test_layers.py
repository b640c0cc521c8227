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
    # foundations: no zooscope imports (the sub-packages' own modules hold only their map)
    ("zooscope.errors", "zooscope.version", "zooscope.kit.qa", "zooscope.kit.synthetic",
     "zooscope.services.bootstrap", "zooscope.files", "zooscope.markdown", "zooscope.record",
     "zooscope.kit", "zooscope.services", "zooscope.upkeep"),
    ("zooscope.environment",),
    ("zooscope.extras",),
    ("zooscope.remote",),
    # the reader interface
    ("zooscope.zoo",),
    # progress reporting
    ("zooscope.progress",),
    # the store interface, models, data loading
    ("zooscope.store", "zooscope.kit.models", "zooscope.kit.data",
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
    # what generators, analyzers and the commands build on: output checks first, then
    # the fine-tuning kit, the upkeep of whole zoos and the analysis services
    ("zooscope.upkeep.outputs",),
    ("zooscope.kit.finetune", "zooscope.upkeep.validate", "zooscope.upkeep.merge",
     "zooscope.upkeep.export", "zooscope.upkeep.imports", "zooscope.services.evaluation",
     "zooscope.services.results", "zooscope.services.card"),
    ("zooscope.services.notebook",),
    # the engine
    ("zooscope.engine.stops", "zooscope.engine.resume", "zooscope.engine.tracking"),
    ("zooscope.engine.checks", "zooscope.engine.loop"),
    ("zooscope.engine.batchsize",),
    ("zooscope.engine.build",),
    ("zooscope.engine", "zooscope.services.report"),
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


#: The highest core layer a store may import: the plugin contracts. A store is a
#: plugin that the core's zoo access reaches through the registry, so it stands below
#: the registry, the access to zoos, the engine, the commands and the CLI.
STORE_CEILING = "zooscope.hookspecs"
#: What no plugin (generator, analyzer or store) may import: the engine, the commands
#: and the command line run plugins; plugins never run them.
ABOVE_PLUGINS = ("zooscope.engine", "zooscope.commands", "zooscope.cli", "zooscope.__main__")


def _store_problems(name: str, path: Path) -> list[str]:
    level = {n: i for i, layer in enumerate(LAYERS) for n in layer}
    problems = [f"{path.name}:{line} imports {target} (a plugin)"
                for line, target in imports(path, name) if plugin_of(target) is not None]
    known = core_modules()
    for line, target in imports(path, name):
        if target == "zooscope.stores" or target.startswith("zooscope.stores.") \
                or plugin_of(target) is not None or not target.startswith("zooscope"):
            continue  # a store's own modules; plugins are caught above
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and level[target] > level[STORE_CEILING]:
            problems.append(f"{path.name}:{line} imports {target} (layer {level[target]}, "
                            f"above the stores' ceiling {STORE_CEILING})")
    return problems


def _plugin_problems(name: str, path: Path) -> list[str]:
    return [f"{path.name}:{line} imports {target}" for line, target in imports(path, name)
            if any(target == top or target.startswith(top + ".") for top in ABOVE_PLUGINS)]


def _core_store_problems(name: str, path: Path) -> list[str]:
    return [f"{path.name}:{line} imports {target} (a store)"
            for line, target in imports(path, name)
            if target == "zooscope.stores" or target.startswith("zooscope.stores.")]


def test_stores_import_only_the_core_below_the_registry() -> None:
    problems = [p for name, path in modules().items() if name.startswith("zooscope.stores")
                for p in _store_problems(name, path)]
    assert problems == []


def test_no_plugin_imports_the_engine_the_commands_or_the_cli() -> None:
    problems = [p for name, path in modules().items()
                if plugin_of(name) is not None or name.startswith("zooscope.stores")
                for p in _plugin_problems(name, path)]
    assert problems == []


def test_the_core_imports_no_store() -> None:
    """The core reaches stores through the registry only, ``__init__`` included."""
    problems = [p for name, path in core_modules().items()
                for p in _core_store_problems(name, path)]
    assert problems == []


def test_each_rule_catches_a_planted_import(tmp_path: Path) -> None:
    """None of the rules is vacuous: a planted import of each kind is found, at module
    level, in a function body and under TYPE_CHECKING."""
    plants = {
        "a store importing a plugin": (_store_problems, "zooscope.stores.hdf5",
                                       "from zooscope.plugins.agreement import Agreement"),
        "a store importing a generator": (_store_problems, "zooscope.stores.h5reader",
                                          "import zooscope.generators.squad"),
        "a store importing the engine": (_store_problems, "zooscope.stores.h5writer",
                                         "from zooscope.engine import build_zoo"),
        "a store importing the registry": (_store_problems, "zooscope.stores.hdf5",
                                           "from zooscope import registry"),
        "a store importing the CLI": (_store_problems, "zooscope.stores.hdf5",
                                      "from zooscope.cli import app"),
        "a plugin importing the engine": (_plugin_problems, "zooscope.plugins.umap",
                                          "from zooscope.engine.build import build_zoo"),
        "a plugin importing the commands": (_plugin_problems, "zooscope.generators.squad",
                                            "from zooscope.commands.common import fail"),
        "a plugin importing the CLI": (_plugin_problems, "zooscope.plugins.agreement",
                                       "import zooscope.cli"),
        "__init__ importing a store": (_core_store_problems, "zooscope",
                                       "from zooscope.stores.h5reader import HDF5Zoo"),
        "the core importing a store": (_core_store_problems, "zooscope.access",
                                       "from .stores import hdf5"),
    }
    for what, (rule, module, statement) in plants.items():
        for form in (f"{statement}\n",
                     f"def f():\n    {statement}\n",
                     f"from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    {statement}\n"):
            source = tmp_path / ("__init__.py" if module == "zooscope" else "planted.py")
            source.write_text(form)
            assert rule(module, source), f"{what} was not caught: {form!r}"
