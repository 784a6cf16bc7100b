"""The ``hdetr`` command line: one verb per module in ``hdetr.commands``."""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import re
import signal
import sys
import threading
from contextlib import contextmanager

from . import __version__, allocator

# verb -> module in hdetr.commands exposing ``add_arguments(parser)`` and ``run(args) -> int``.
VERBS = {
    "convert": "convert",
    "check-data": "check_data",
    "convert-data": "convert_data",
    "export": "export",
    "bench": "bench",
    "train": "train",
    "eval": "eval",
    "predict": "predict",
    "synth": "synth",
    "demo": "demo",
    "serve": "serve",
    "models": "models",
}

# Exit statuses, one per error class (documented in ``hdetr --help`` and docs/reliability.md).
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_INTERNAL = 70  # a bug in hdetr: the message asks for --debug
EXIT_NO_MEMORY = 71
EXIT_IO = 74  # the operating system refused a read or a write (disk full, permissions, not a folder, ...)
MESSAGE_LIMIT = 4000  # characters of an error message printed (errors.quote caps each quoted value first)
EXIT_HELP = """\
exit status:
  0    success
  1    hdetr check-data / bench: the data or a check FAILED; hdetr predict: some images could not be read
       (each named; the others were written)
  2    a usage, config, data or model-file error (one line names the file or key and the problem)
  70   an internal error (a bug in hdetr); rerun with --debug for the traceback and report it
  71   out of memory
  74   the operating system refused a read or write (disk full, permission, missing folder)
  130, 143  interrupted by SIGINT / SIGTERM (training saved last.pt first; continue with --resume)

--debug (or HDETR_DEBUG=1) prints the full traceback for any error.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hdetr", description="DETR detectors with hybrid matching (H-DETR).",
                                     epilog=EXIT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="print the traceback of any error (also: HDETR_DEBUG=1)")
    parser.add_argument("--version", action="version", version=f"hdetr {__version__}")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb, module_name in VERBS.items():
        module = importlib.import_module(f"hdetr.commands.{module_name}")
        # A verb that hands its arguments to another program (bench) lets that program answer --help.
        p = sub.add_parser(verb, help=module.__doc__.strip().splitlines()[0], description=module.__doc__,
                           add_help=not getattr(module, "PASS_THROUGH", False))
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def terminal_safe(text: str) -> str:
    """Control characters (escape sequences in a category name or a file name) shown as ``\\x1b``, not obeyed."""
    return re.sub(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", lambda m: repr(m[0])[1:-1], text)


def check_device(device: str | None) -> None:
    """Refuse a --device torch cannot use, before any data is read."""
    from .errors import UserError, quote

    if device is None or device == "auto":
        return
    if not re.fullmatch(r"cpu|cuda(:\d+)?|mps", device):
        raise UserError(f"--device: expected auto, cpu, cuda or cuda:N, got {quote(device)}")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UserError(f"--device {device}: no CUDA device is available here; use --device cpu")
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise UserError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here")


def _os_error_message(e: OSError, verb: str = "") -> str:
    where = " -> ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
    what = e.strerror or str(e)
    if e.errno == errno.ENOSPC:
        # Every output goes through files.atomic_write: nothing half-written is left under its name.
        what += " (the disk is full; nothing was left half-written: free some space and run again"
        what += ", with --resume to continue from the last checkpoint, which is intact)" if verb == "train" else ")"
    return f"{where}: {what}" if where else what


@contextmanager
def terminate_as_interrupt():
    """SIGTERM (a scheduler, ``kill``, a container stop) unwinds like Ctrl-C: ``finally`` blocks run, so
    temporary files are removed and no half-written file is left under a final name; the CLI exits 143.
    Training installs its own handler inside (it saves a checkpoint first); servers install theirs."""
    from .errors import Terminated

    def handler(signum, frame):
        raise Terminated(signum)

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    from .threads import prefer_passive_waiting

    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    late_debug = "--debug" in argv[1:]  # also accepted after the verb: hdetr train ... --debug
    if late_debug:
        argv = argv[:1] + [a for a in argv[1:] if a != "--debug"]
    args, extra = parser.parse_known_args(argv)
    args.debug = args.debug or late_debug
    if extra and getattr(args._module, "PASS_THROUGH", False):
        # argparse leaves a leading option (hdetr bench --help) out of a REMAINDER argument.
        args.arguments = extra + args.arguments
        extra = []
    if extra:
        # argparse stops filling a nargs="*" positional at the first option; key=value overrides given
        # after options (hdetr train CONFIG --out DIR train.lr=1e-4) still belong to it.
        if isinstance(getattr(args, "overrides", None), list) and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides += extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    debug = args.debug or os.environ.get("HDETR_DEBUG", "") not in ("", "0")
    prefer_passive_waiting(getattr(args, "threads", None))
    if args.verb in allocator.INFERENCE_VERBS:
        allocator.reuse_large_blocks()

    def run() -> int:
        check_device(getattr(args, "device", None))
        return int(args._module.run(args) or 0)

    return guarded(f"hdetr {args.verb}", run, debug, args.verb)


def guarded(prefix: str, run, debug: bool = False, verb: str = "") -> int:
    """``run()``'s exit status, every error turned into one line on stderr (``prefix: error: ...``) and
    the exit status of its class (EXIT_HELP); ``debug`` adds the traceback. The error boundary of the
    ``hdetr`` verbs, and of any tool built on hdetr that should answer the same way. SIGTERM unwinds
    like Ctrl-C inside it (``terminate_as_interrupt``)."""
    from .errors import Interrupted, Terminated, UserError, cap, child_error

    def fail(status: int, message: str, error: BaseException) -> int:
        if debug:
            import traceback

            traceback.print_exception(error)  # with its __cause__: a worker's own traceback
        # The last cap on input echoed back: a message that quotes a huge value somewhere uncapped.
        print(terminal_safe(f"{prefix}: {cap(message, MESSAGE_LIMIT)}"), file=sys.stderr)
        return status

    try:
        with terminate_as_interrupt():
            return int(run() or 0)
    except (Exception, KeyboardInterrupt, Terminated) as raised:  # the last line of defence: one line, not a traceback
        # An error raised in a DataLoader worker arrives wrapped, with the worker's traceback as its
        # message: answer it exactly as if this process had raised it.
        e = child_error(raised)
    if isinstance(e, UserError):
        return fail(EXIT_USAGE, f"error: {e}", e)
    if isinstance(e, (Interrupted, Terminated)):
        print(f"{prefix}: {e if isinstance(e, Interrupted) else 'stopped by SIGTERM'}", file=sys.stderr)
        return e.exit_code
    if isinstance(e, KeyboardInterrupt):
        print(f"{prefix}: interrupted", file=sys.stderr)
        return 130
    if isinstance(e, MemoryError):
        return fail(EXIT_NO_MEMORY, f"error: out of memory ({e or 'MemoryError'}); use smaller images, batches or models", e)
    if isinstance(e, OSError):
        return fail(EXIT_IO, f"error: {_os_error_message(e, verb)}", e)
    hint = "" if debug else "; rerun with --debug for the traceback"
    return fail(EXIT_INTERNAL, f"internal error: {type(e).__name__}: {e}{hint}", e)



if __name__ == "__main__":
    sys.exit(main())
