"""Command-line interface (the only part of adm that imports typer)."""
