"""The one exception type that reaches the user as a one-line message instead of a traceback."""


class UserError(Exception):
    """A problem with the user's input (a path, a config, a number) described in one line.

    The CLI prints it as ``moe-tui: error: <message>`` and exits with code 2; the TUI shows it in a dialog.
    """
