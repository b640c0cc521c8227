"""``zooscope plugins``: what is installed, from the plugin manager."""

from __future__ import annotations

from typing import Annotated

import typer

from zooscope import registry
from zooscope.commands.common import JsonOption, console, print_json, rich_table


def plugins(
    all_: Annotated[bool, typer.Option("--all", help="Include the built-in plugins.")] = False,
    json_: JsonOption = False,
) -> None:
    """List installed plugins: name, kind, version, hooks.

    Example: zooscope plugins --all --json
    """
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
