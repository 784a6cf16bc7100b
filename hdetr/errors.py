"""Errors meant for the user: the CLI prints their message (naming the file and the problem), no traceback."""


class UserError(Exception):
    pass
