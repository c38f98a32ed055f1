"""`cnnsearch` commands: reports (registered with search.cli.command)."""
