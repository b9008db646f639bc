"""Reports of bench runs: the headline table (terminal, Markdown, HTML), plots, and report.html."""
