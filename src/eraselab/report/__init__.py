"""Reports of bench runs: the headline table (terminal and HTML), plots, and the self-contained report.html."""
