"""The one exception type users see: a message that names the problem and what to do."""


class TinyRNNError(Exception):
    """A problem with the user's model, input or options.

    The CLI prints ``error: <message>`` and exits with status 2; it never shows a traceback
    for this class.
    """


class TinyRNNWarning(UserWarning):
    """Something the user should know about an accepted input (the CLI prints
    ``warning: <message>`` on stderr and carries on)."""
