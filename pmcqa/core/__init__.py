"""Core: settings and the rules every layer shares (no pmcqa imports above this package)."""
