"""``zooscope plugins``: what is installed, from the plugin manager."""

from __future__ import annotations

from typing import Annotated

import typer

from zooscope import registry
from zooscope.commands.common import JsonOption, console, print_json, rich_table


def plugins(
    all_: Annotated[bool, typer.Option("--all", help="Include the built-in plugins.")] = False,
    keys: Annotated[str | None, typer.Option(
        "--keys", metavar="GENERATOR",
        help="List the config keys the generator declares, beyond the core's.")] = None,
    json_: JsonOption = False,
) -> None:
    """List installed plugins: name, kind, version, hooks.

    Example: zooscope plugins --all --json

    Example: zooscope plugins --keys squad
    """
    if keys is not None:
        _keys(keys, json_)
        return
    rows = registry.plugin_table(include_builtins=all_)
    if json_:
        print_json(rows)
        return
    if not rows:
        console.print("No third-party plugins installed; `zooscope plugins --all` shows the "
                      "built-ins.")
        return
    console.print(rich_table(
        [{**r, "package": r["distribution"], "provides": "; ".join(f"{kind} {', '.join(names)}"
                                     for kind, names in r["provides"].items()) or "observer"}
         for r in rows],
        columns=["package", "name", "provides", "version", "hooks"]))


def _keys(name: str, json_: bool) -> None:
    from zooscope.config import type_name

    generator = registry.get_generator(name)
    rows = [{"key": f"[{table}] {key}", "type": type_name(k.types), "default": k.default,
             "help": k.help}
            for table, declared in generator.config_keys.items() for key, k in declared.items()]
    if json_:
        print_json(rows)
        return
    if not rows:
        console.print(f"{name} reads only the core's config keys")
        return
    console.print(rich_table([{**r, "default": "" if r["default"] is None else r["default"]}
                              for r in rows], columns=["key", "type", "default", "help"]))
