"""What stops or skips a training step, and how it is reported: SIGINT/SIGTERM, a non-finite loss or
gradient, an image that cannot be loaded. Every decision is agreed across processes, so no rank waits
for another that left."""

from __future__ import annotations

import signal
import threading

import torch

from ..errors import BadImageError, DataError, UserError, child_error
from . import distributed


class NonFiniteLossError(UserError):
    pass


# -- SIGINT / SIGTERM -------------------------------------------------------------------------------
class StopSignals:
    """While active (a context manager), SIGINT and SIGTERM only set ``received``; the loop checks it
    between steps (``agreed``). A second signal interrupts at once (KeyboardInterrupt); checkpoint files
    stay consistent either way (atomic writes). Off the main thread signals cannot be caught: inactive."""

    def __init__(self):
        self.received: int | None = None
        self._previous: dict = {}

    def __enter__(self) -> StopSignals:
        self.received = None
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handler) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous = {}

    def _handler(self, signum, frame) -> None:
        # No printing here: a handler that writes to stdout can interrupt another write to it.
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum

    def agreed(self, info: distributed.DistInfo, device: torch.device) -> int | None:
        """The signal any process received (the same answer on every rank), or None."""
        got = self.received
        if info.enabled and distributed.any_true(got is not None, device):
            got = next(f for f in distributed.gather_objects(got) if f is not None)
        return got


# -- non-finite loss or gradient --------------------------------------------------------------------
def nonfinite(what: str, terms: dict, image_ids: list[int], *, skip: bool, skipped: int, where: str,
              last: str) -> str:
    """Agree on a bad step across ranks (a collective: every rank calls it). With ``skip`` returns the
    warning to log (``skipped``: steps skipped so far, this one included); otherwise raises
    ``NonFiniteLossError`` naming the terms, the step (``where``), the images and the last checkpoint."""
    reports = distributed.gather_objects({"terms": terms, "images": image_ids})
    bad_terms = {k: v for r in reports for k, v in r["terms"].items()}
    images = sorted({i for r in reports for i in r["images"]})
    if skip:
        return (f"warning: non-finite {what} at {where}: {bad_terms}; images {images}; step skipped "
                f"({skipped} so far)")
    raise NonFiniteLossError(
        f"non-finite {what} at {where}: {', '.join(f'{k}={v}' for k, v in bad_terms.items()) or 'on another rank'}; "
        f"image ids {images}. Training stopped; {last}. Lower train.lr, keep gradient clipping "
        f"(train.clip_max_norm) or set train.nonfinite=skip to skip such steps."
    )


# -- images that cannot be loaded mid-epoch ---------------------------------------------------------
def next_group(batches, count: int, info: distributed.DistInfo, device) -> tuple[list, BadImageError | None]:
    """The step's ``count`` batches, and the first image error met (agreed across ranks). All of them are
    drawn even when one fails to load, so the data position stays (epoch, step) exactly, as resume
    assumes."""
    group, bad = [], None
    for _ in range(count):
        try:
            group.append(next(batches))
        except BadImageError as e:  # from a DataLoader worker, already unwrapped by engine.loaders.Loader
            e = child_error(e)
            bad = bad or BadImageError(str(e), getattr(e, "path", None), getattr(e, "image_id", None))
    if info.enabled and distributed.any_true(bad is not None, device):
        messages = [m for m in distributed.gather_objects(str(bad) if bad is not None else None) if m]
        bad = bad or BadImageError(f"on another process: {messages[0]}")
    return group, bad


def bad_image(bad: BadImageError, *, skip: bool, skipped: int, where: str, last: str) -> str:
    """With ``skip`` the warning to log (``skipped``: steps skipped so far, this one included); otherwise
    raises ``DataError`` naming the image and the step."""
    if skip:
        return f"warning: {bad}; step at {where} skipped (data.skip_bad_images; {skipped} so far)"
    raise DataError(f"{bad}\n(met at {where}). Training stopped; {last}. Fix or remove the image and "
                    f"resume with --resume, or set data.skip_bad_images=true to skip such steps.")
