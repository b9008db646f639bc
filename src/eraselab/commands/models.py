"""`eraselab models`: which models can be used here without a download."""
import typer


def register(app: typer.Typer) -> None:
    @app.command("models")
    def models_cmd():
        """List models available locally: the embedded miniworld model and diffusers pipelines in the hub cache.

        Example: eraselab models
        """  # noqa: E501 (typer shows the docstring line by line: wrapping it would wrap the help)
        from rich.console import Console
        from rich.table import Table

        from ..models import list_local_models

        table = Table("model", "kind", "where")
        rows = list_local_models()
        for r in rows:
            table.add_row(r["model"], r["kind"], r["where"])
        Console().print(table if rows else "no local models; `eraselab miniworld train --out DIR` builds one")
