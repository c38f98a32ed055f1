"""Helpers the test packages share (no tests here): servers, subprocess starters, small studies.

Test modules import from here, never from each other; fixtures built on these live in
``tests/conftest.py``. Spawned child processes import their targets from here too.
"""
