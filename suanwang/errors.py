"""The one error type the CLI turns into a single line and a non-zero exit."""


class SuanwangError(Exception):
    """A failure the user can act on; the message names the cause and what to do."""
