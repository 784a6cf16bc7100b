"""Errors meant for the user: the CLI prints their message (naming the file and the problem), no traceback."""


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
