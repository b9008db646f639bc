"""A Markdown summary of a bench run (the headline table and provenance), for papers and READMEs."""
from __future__ import annotations

from .headline import format_cell, headline


def _escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def markdown_summary(results: dict) -> str:
    h = headline(results)
    cols = h["columns"]
    lines = [f"# eraselab: erasing {_escape(', '.join(results['targets']))}", "",
             f"Model `{results['model']['source']}` (fingerprint `{results['model']['fingerprint']}`), "
             f"evaluator {results['evaluator']['name']} v{results['evaluator']['version']}.", "",
             "| method | " + " | ".join(f"{c.label} {c.arrow}".rstrip() for c in cols) + " |",
             "|---" * (len(cols) + 1) + "|"]
    if any(h["original"]):
        lines.append("| original | " + " | ".join(format_cell(o, False) for o in h["original"]) + " |")
    for r in h["rows"]:
        cells = [f"**{format_cell(c)}**" if b else format_cell(c) for c, b in zip(r["cells"], r["best"])]
        lines.append(f"| {_escape(r['method'])} | " + " | ".join(cells) + " |")
    versions = ", ".join(f"{k} {v}" for k, v in results["versions"].items())
    lines += ["", ("Values with 95% intervals over images (report.html's glossary names each metric's "
                   f"interval method, unit and definition). Versions: {versions}."), ""]
    return "\n".join(lines)
