"""Command-line layer: the only part that prints and exits."""
