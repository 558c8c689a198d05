"""`kagglecv config`: every recipe key as one table (default, type, meaning, and the value a recipe
plus overrides gives it)."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table

from kagglecv.core.config import describe_config, load_config
from kagglecv.core.console import console


def show_config(config: str | None, overrides: list[str]) -> None:
    """Every recipe key as a table: default, type, meaning, and the value in --config (+ overrides)."""
    chosen = load_config(config, overrides).to_dict() if config or overrides else None
    where = " + ".join(x for x in (config, " ".join(overrides)) if x)
    table = Table(title="recipe keys (configs/*.yaml, or key=value words after the command)")
    table.add_column("key", no_wrap=True)
    table.add_column("default")
    if chosen is not None:
        table.add_column(escape(where))
    table.add_column("type")
    table.add_column("meaning")
    for key, default, type_name, meaning in describe_config():
        value = [] if chosen is None else [_yaml(chosen[key], bold=chosen[key] != default)]
        table.add_row(key, _yaml(default), *value, escape(type_name), escape(meaning))
    console.print(table)


def _yaml(value, bold: bool = False) -> str:
    """A value as the YAML recipe spells it (null, true, 1e-07), bold where it is not the default."""
    if value is None or isinstance(value, bool):
        value = {None: "null", True: "true", False: "false"}[value]
    text = escape(str(value))
    return f"[bold]{text}[/]" if bold else text
