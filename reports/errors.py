"""The error a report or export problem raises."""


class ReportError(RuntimeError):
    """A report or export cannot be written (no completed trial, unwritable --out).

    The message is one line; the CLI prints it as it is and exits with code 2.
    """
