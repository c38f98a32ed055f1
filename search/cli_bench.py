"""`cnnsearch` commands: bench (registered with search.cli.command)."""
