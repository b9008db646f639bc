"""The rich console commands print to, and the headline table in the terminal."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table

from ..metric_info import headline_keys

console = Console()


# The terminal shows the columns that fit 80 characters (the declarations' `terminal` keys); report.html has
# them all.
TERMINAL_COLUMNS = headline_keys(terminal=True)


def summary_table(results: dict, columns=TERMINAL_COLUMNS) -> Table:
    from ..report.headline import format_cell, headline

    h = headline(results, keys=columns)
    table = Table(title=f"eraselab — erasing {', '.join(results.get('targets', []))} "
                        f"({results.get('model', {}).get('source', '?')})", header_style="bold")
    table.add_column("method", no_wrap=True)
    for c in h["columns"]:
        table.add_column(f"{c.label} {'↓' if c.better == 'lower' else '↑'}", justify="right")
    if any(h["original"]):
        table.add_row("[dim]original[/dim]", *[f"[dim]{format_cell(o, False)}[/dim]" for o in h["original"]])
    for r in h["rows"]:
        cells = [f"[bold green]{format_cell(c, False)}[/bold green]" if best else format_cell(c, False)
                 for c, best in zip(r["cells"], r["best"])]
        table.add_row(r["method"], *cells)
    return table
