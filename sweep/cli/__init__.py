"""The `odyssey` command line: one module per command group; `sweep.cli.main` assembles them."""
