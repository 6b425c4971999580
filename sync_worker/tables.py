"""Plain-text tables for the commands that show reports (`status`, `verify`): rich tables
without colour or markup, every cell's control characters escaped, so a report reads the same
in a terminal and in a log file and CRM data cannot drive the terminal that shows it."""

from __future__ import annotations

import io
import shutil

from rich import box
from rich.console import Console
from rich.table import Table

from sync_worker.display import printable

# Narrower terminals still get this many columns (the tables wrap rather than squeeze).
MIN_WIDTH = 100


def titled_table(title: str) -> Table:
    return Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False)


def add_text_row(table: Table, *cells: str) -> None:
    """Adds a row of data, each control character escaped before the table is laid out."""
    table.add_row(*(printable(cell) for cell in cells))


def text_console(buffer: io.StringIO, width: int) -> Console:
    return Console(
        file=buffer,
        width=width,
        color_system=None,
        highlight=False,
        emoji=False,
        markup=False,
        soft_wrap=False,
    )


def plain_text(buffer: io.StringIO) -> str:
    """What a console printed into `buffer`, without trailing blanks, every control character
    of the data in it escaped."""
    text = "\n".join(line.rstrip() for line in buffer.getvalue().splitlines()).strip() + "\n"
    return printable(text, keep="\n")


def terminal_width(default: int) -> int:
    """The terminal's width (`default` when there is none, as in a pipe), at least
    `MIN_WIDTH`."""
    return max(shutil.get_terminal_size((default, 24)).columns, MIN_WIDTH)
