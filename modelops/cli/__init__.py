"""Command entry points of the installed CLI: one module per command, each `main(argv) -> int`."""
