"""The error a storage problem raises."""


class StorageError(RuntimeError):
    """A storage URL cannot be used: unknown scheme, unreachable server, wrong password.

    The message is one line, with any password in a URL masked; the CLI prints it as it
    is and exits with code 2.
    """


class StudyNameError(StorageError):
    """A study name cannot be used: empty, too long, or with characters that would make it a path."""
