"""Rich rendering for the CLI: errors, generic dict/list trees and tables, progress bars."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

console = Console()
err_console = Console(stderr=True)


def error(message: str) -> None:
    """Print `message` on stderr as ``error: ...`` (no markup, no wrapping: one line stays one line)."""
    err_console.print(Text("error: ", style="bold red") + Text(message), soft_wrap=True)


def _scalar(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _uniform_records(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(v, dict) for v in value)
        and all(not isinstance(x, dict | list) for v in value for x in v.values())
    )


def records_table(rows: list[dict[str, Any]], title: str | None = None) -> Table:
    """A table whose columns are the union of the rows' keys (in first-seen order)."""
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    table = Table(title=title)
    for name in columns:
        table.add_column(str(name), overflow="fold")  # wrap long values instead of cutting them
    for row in rows:
        table.add_row(*(_scalar(row.get(c, "")) for c in columns))
    return table


def _add(tree: Tree, key: str, value: Any) -> None:
    if isinstance(value, dict):
        branch = tree.add(Text(str(key), style="bold"))
        for k, v in value.items():
            _add(branch, str(k), v)
    elif _uniform_records(value):
        tree.add(records_table(value, title=str(key)))
    elif isinstance(value, list) and any(isinstance(v, dict | list) for v in value):
        branch = tree.add(Text(str(key), style="bold"))
        for i, v in enumerate(value):
            _add(branch, f"[{i}]", v)
    else:
        shown = ", ".join(map(_scalar, value)) if isinstance(value, list) else _scalar(value)
        tree.add(Text(f"{key}: ", style="bold") + Text(shown))


def render_data(data: Any, title: str) -> Tree:
    """Any JSON-like value (dicts, lists, scalars) as a rich tree; lists of flat dicts become tables."""
    tree = Tree(Text(title, style="bold cyan"))
    if isinstance(data, dict):
        for key, value in data.items():
            _add(tree, str(key), value)
    else:
        _add(tree, "value", data)
    return tree


def print_json(data: Any) -> None:
    console.print_json(json.dumps(data, default=str))


def status(message: str, quiet: bool = False) -> Any:
    """A spinner on stderr while a slow step runs (nothing with `quiet`)."""
    from contextlib import nullcontext

    return nullcontext() if quiet else err_console.status(message)


@contextmanager
def stage_progress(enabled: bool = True) -> Iterator[Callable[[str, int, int], None]]:
    """Progress bars keyed by stage name; yields ``update(stage, done, total)``."""
    if not enabled:
        yield lambda stage, done, total: None
        return
    columns = (TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err_console) as progress:  # stderr: stdout stays parseable (--json)
        tasks: dict[str, Any] = {}

        def update(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = progress.add_task(stage, total=max(total, 1))
            progress.update(tasks[stage], completed=done, total=max(total, 1))

        yield update
