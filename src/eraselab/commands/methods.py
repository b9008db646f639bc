"""`eraselab methods`: the erasure methods with one-line descriptions, their default settings, and which model
families (SD 1.x/2.x, SDXL, Flux) each runs on with which recipe."""
from __future__ import annotations

import typer


def method_rows() -> list[dict]:
    import dataclasses

    from ..methods import get_method, method_names

    rows = []
    for name in method_names():
        cls = get_method(name)
        defaults = {f.name: getattr(cls.Config(), f.name) for f in dataclasses.fields(cls.Config)}
        recipes = [{"name": r.name, "reference": r.cite(), "summary": r.summary,
                    "changes": dict(r.defaults)} for r in cls.Config.recipes]
        if recipes:
            defaults["recipe"] = recipes[0]["name"]
        rows.append({"method": name, "description": cls.description, "defaults": defaults, "recipes": recipes,
                     "miniworld": dict(cls.Config.miniworld), "help": dict(cls.Config.help),
                     "families": family_recipes(cls)})
    return rows


def family_recipes(cls) -> dict[str, str]:
    """Each model family the method runs on → the recipe it uses there by default ("" without recipes)."""
    by_family = cls.Config.default_recipes()
    first = cls.Config.recipes[0].name if cls.Config.recipes else ""
    return {f: by_family.get(f, first) for f in cls.families}


def matrix_lines(rows: list[dict]) -> list[str]:
    """The support matrix: one line per method, one column per family (the default recipe there, or –)."""
    from ..generation.family import FAMILIES
    from ..methods.base import FAMILY_NAMES

    width = max(len(r["method"]) for r in rows) + 2
    cells = {f: max([len(FAMILY_NAMES[f])] + [len(r["families"].get(f) or "yes") for r in rows]) + 2
             for f in FAMILIES}
    lines = ["which model family each method runs on (the recipe it uses there; – = refused):",
             "".ljust(width) + "".join(FAMILY_NAMES[f].ljust(cells[f]) for f in FAMILIES)]
    for r in rows:
        marks = [(r["families"][f] or "yes") if f in r["families"] else "–" for f in FAMILIES]
        lines.append(r["method"].ljust(width) + "".join(m.ljust(cells[f]) for m, f in zip(marks, FAMILIES)))
    return [line.rstrip() for line in lines]


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
        """List the erasure methods, their recipes (the official code each reproduces), their SD 1.x defaults,
        the scaled-down miniworld preset, and which model families (SD 1.x/2.x, SDXL, Flux) each runs on.

        Example: eraselab methods
        """
        import sys

        rows = method_rows()
        # A table only for a terminal: piped or redirected, rich would cut every cell to 80 columns.
        print_table(rows) if sys.stdout.isatty() else print_plain(rows)
        print("\n".join(matrix_lines(rows)))
        if verbose:
            for r in rows:
                print(r["method"])
                for rec in r["recipes"]:
                    print(f"  recipe {rec['name']}: {rec['summary']} ({rec['reference']})")
                for k, text in r["help"].items():
                    print(f"  {k}: {text}")
        print(
            "Set with --config key=value; recipe=NAME picks a reference recipe; preset=auto picks miniworld "
            "for the embedded model or a UNet under 50 M parameters."
        )


def family_text(families: dict[str, str]) -> str:
    from ..methods.base import FAMILY_NAMES

    return ", ".join(FAMILY_NAMES.get(f, f) + (f" (recipe {recipe})" if recipe else "")
                     for f, recipe in families.items())


def settings_text(values: dict) -> str:
    return " ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in values.items())


def print_table(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        "method",
        "what it does",
        "recipes (reference code)",
        "defaults (SD 1.x)",
        "miniworld preset",
        show_lines=True,
    )
    for r in rows:
        table.add_row(r["method"], r["description"], recipe_cell(r["recipes"]), settings_text(r["defaults"]),
                      settings_text(r["miniworld"]) or "same")
    Console().print(table)


def print_plain(rows: list[dict]) -> None:
    """Every method as a few full lines, nothing truncated (for pipes, files and grep)."""
    for r in rows:
        print(f"{r['method']}: {r['description']}")
        for line in recipe_cell(r["recipes"]).splitlines():
            print(f"  recipe {line}")
        print(f"  defaults (SD 1.x): {settings_text(r['defaults'])}")
        print(f"  runs on: {family_text(r['families'])}")
        print(f"  miniworld preset: {settings_text(r['miniworld']) or 'same'}")
