"""One exception type for every bad input, so the CLI can print one line and exit non-zero."""


class LinesError(Exception):
    """A user-facing error: the message is one line naming the file, key or value at fault."""
