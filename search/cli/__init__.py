"""The ``cnnsearch`` command line, a thin layer over the Python API: one module per command group.

The command table is :data:`search.cli.main.COMMANDS`; ``cnnsearch`` and ``python -m search.cli``
both run :func:`main`.
"""

from search.cli.main import main

__all__ = ["main"]
