"""Errors a user can act on: the ``prox`` command shows their message as one line
(``Error: ...``, exit status 1), never a traceback."""


class UserError(Exception):
    """A refusal or failure whose message says what to change (a file, a name, a count)."""
