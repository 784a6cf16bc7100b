"""Errors meant for the user: the CLI prints their message (naming the file and the problem), no traceback."""

import re


class UserError(Exception):
    pass


class DataError(UserError):
    """The dataset (annotation file or an image) is unusable as it stands; the message names the file."""


class BadImageError(DataError):
    """One image cannot be used: missing, unreadable, truncated, outside the images folder, or not the size
    the annotation file says. ``path`` and ``image_id`` let a training loop skip and count it, or stop."""

    def __init__(self, message: str, path=None, image_id=None):
        super().__init__(message)
        self.path = path
        self.image_id = image_id


class Interrupted(Exception):
    """Training stopped by SIGINT/SIGTERM after saving a checkpoint; the CLI exits with ``exit_code``
    (128 + the signal number: 130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


class Terminated(BaseException):
    """SIGTERM outside training (the CLI's handler raises it). A BaseException like KeyboardInterrupt, so
    that no ``except Exception`` swallows it on the way out; ``finally`` blocks still remove temporary
    files. The CLI exits with ``exit_code`` (143)."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by signal {signum}")
        self.signum = signum
        self.exit_code = 128 + signum


# -- quoting user input -------------------------------------------------------------------------------
QUOTE_LIMIT = 200  # characters of a user's value an error message shows


def quote(value, limit: int = QUOTE_LIMIT) -> str:
    """``repr(value)`` for a message, capped: a pasted file or a YAML alias bomb must not become a 5 MB
    error line. What is left out is counted, so the reader knows the value goes on."""
    return cap(repr(value), limit)


def cap(text: str, limit: int = QUOTE_LIMIT) -> str:
    """``text`` cut to ``limit`` characters, saying how many were left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


# -- errors raised in child processes -----------------------------------------------------------------
# torch re-raises an exception from a DataLoader worker (or a thread: torch._utils.ExceptionWrapper) in
# the parent as ``type(msg)`` where msg is "Caught NAME WHERE.\nOriginal Traceback (most recent call
# last):\n...\nmodule.NAME: the original message". Types that cannot be built from one string arrive
# as RuntimeError with the same text.
_CHILD_HEADER = re.compile(r"Caught (\w+) (.*?)\.\nOriginal Traceback \(most recent call last\):\n", re.S)


def child_error(e: BaseException) -> BaseException:
    """The exception a child process (DataLoader worker) raised, as itself: same type, its own message,
    without the worker's traceback; ``e`` unchanged when it did not come from a child. The worker's
    traceback stays reachable as the result's ``__cause__`` (``--debug`` prints it)."""
    text = str(e.args[0]) if len(e.args) == 1 and isinstance(e.args[0], str) else ""
    header = _CHILD_HEADER.match(text)
    if header is None:
        return e
    name = header.group(1)
    lines = text[header.end():].split("\n")
    # The exception line is the last line, at column 0, that names the type (module-qualified or not);
    # frame lines are indented and the message may go on over several lines after it.
    starts = [i for i, line in enumerate(lines)
              if re.match(rf"([\w.]+\.)?{re.escape(name)}(: |$)", line)]
    if not starts:
        return e
    first = lines[starts[-1]]
    message = "\n".join([first.split(": ", 1)[1] if ": " in first else "", *lines[starts[-1] + 1:]]).rstrip()
    try:
        unwrapped = type(e)(message) if type(e).__name__ == name else RuntimeError(f"{name}: {message}")
    except Exception:  # noqa: BLE001 - a type that cannot be rebuilt from its message
        return e
    unwrapped.__cause__ = e
    return unwrapped
