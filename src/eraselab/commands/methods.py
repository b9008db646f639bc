"""`eraselab methods`: the erasure methods with one-line descriptions and their default settings."""
from __future__ import annotations

import typer


def method_rows() -> list[dict]:
    import dataclasses

    from ..methods import get_method, method_names

    rows = []
    for name in method_names():
        cls = get_method(name)
        defaults = {f.name: getattr(cls.Config(), f.name) for f in dataclasses.fields(cls.Config)}
        recipes = [{"name": r.name, "reference": r.reference.cite(), "summary": r.summary,
                    "changes": dict(r.defaults)} for r in cls.Config.recipes]
        if recipes:
            defaults["recipe"] = recipes[0]["name"]
        rows.append({"method": name, "description": cls.description, "defaults": defaults, "recipes": recipes,
                     "miniworld": dict(cls.Config.miniworld), "help": dict(cls.Config.help)})
    return rows


def recipe_cell(recipes: list[dict]) -> str:
    """Each recipe with its reference; the first is the default."""
    lines = []
    for i, r in enumerate(recipes):
        changes = " ".join(f"{k}={v}" for k, v in r["changes"].items())
        lines.append(f"{r['name']}{' (default)' if i == 0 else ''}: {r['reference']}"
                     + (f" [{changes}]" if changes else ""))
    return "\n".join(lines) or "–"


def register(app: typer.Typer) -> None:
    @app.command("methods")
    def methods_cmd(verbose: bool = typer.Option(False, "--verbose", "-v", help="explain every setting")):
        """List the erasure methods, their SD 1.x defaults and the scaled-down miniworld preset.

        Example: eraselab methods
        """
        from rich.console import Console
        from rich.table import Table

        table = Table("method", "what it does", "recipes (reference code)", "defaults (SD 1.x)", "miniworld preset",
                      show_lines=True)
        rows = method_rows()
        for r in rows:
            table.add_row(r["method"], r["description"], recipe_cell(r["recipes"]),
                          " ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in r["defaults"].items()),
                          " ".join(f"{k}={v}" for k, v in r["miniworld"].items()) or "same")
        console = Console()
        console.print(table)
        if verbose:
            for r in rows:
                console.print(f"[bold]{r['method']}[/bold]")
                for rec in r["recipes"]:
                    console.print(f"  recipe {rec['name']}: {rec['summary']} ({rec['reference']})")
                for k, text in r["help"].items():
                    console.print(f"  {k}: {text}")
        console.print("Set with --config key=value; preset=auto picks miniworld for the embedded model or a UNet "
                      "under 50 M parameters.")
