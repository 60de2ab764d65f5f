"""adm's version, importable without loading the package's public API (and torch)."""

__version__ = "0.9.0"
