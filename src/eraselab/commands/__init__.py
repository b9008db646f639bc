"""CLI command groups, one module each; every module defines `register(app)`.

cli.py registers them in COMMAND_MODULES order. A new command is a new module listed there.
"""
