"""The error a bad search space raises."""


class SpaceError(ValueError):
    """A space file, preset or config value is not valid.

    The message is one line that names the file (or preset), the key, the bad value and
    what would be accepted; the CLI prints it as it is and exits with code 2.
    """
