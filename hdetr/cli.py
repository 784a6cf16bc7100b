"""The ``hdetr`` command line: one verb per module in ``hdetr.commands``."""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import re
import sys

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
}

# Exit statuses, one per error class (documented in ``hdetr --help`` and docs/reliability.md).
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_INTERNAL = 70  # a bug in hdetr: the message asks for --debug
EXIT_NO_MEMORY = 71
EXIT_IO = 74  # the operating system refused a read or a write (disk full, permissions, not a folder, ...)
EXIT_HELP = """\
exit status:
  0    success
  1    hdetr check-data / bench: the data or a check FAILED
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
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb, module_name in VERBS.items():
        module = importlib.import_module(f"hdetr.commands.{module_name}")
        p = sub.add_parser(verb, help=module.__doc__.strip().splitlines()[0], description=module.__doc__)
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def terminal_safe(text: str) -> str:
    """Control characters (escape sequences in a category name or a file name) shown as ``\\x1b``, not obeyed."""
    return re.sub(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", lambda m: repr(m[0])[1:-1], text)


def check_device(device: str | None) -> None:
    """Refuse a --device torch cannot use, before any data is read."""
    from .errors import UserError

    if device is None:
        return
    if not re.fullmatch(r"cpu|cuda(:\d+)?|mps", device):
        raise UserError(f"--device: expected cpu, cuda or cuda:N, got {device!r}")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UserError(f"--device {device}: no CUDA device is available here; use --device cpu")
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise UserError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here")


def _os_error_message(e: OSError) -> str:
    where = " -> ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
    what = e.strerror or str(e)
    if e.errno == errno.ENOSPC:
        what += " (the disk is full)"
    return f"{where}: {what}" if where else what


def main(argv: list[str] | None = None) -> int:
    from . import allocator
    from .errors import Interrupted, UserError
    from .threads import prefer_passive_waiting

    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    late_debug = "--debug" in argv[1:]  # also accepted after the verb: hdetr train ... --debug
    if late_debug:
        argv = argv[:1] + [a for a in argv[1:] if a != "--debug"]
    args, extra = parser.parse_known_args(argv)
    args.debug = args.debug or late_debug
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
    prefix = f"hdetr {args.verb}"

    def fail(status: int, message: str) -> int:
        if debug:
            import traceback

            traceback.print_exc()
        print(terminal_safe(f"{prefix}: {message}"), file=sys.stderr)
        return status

    try:
        check_device(getattr(args, "device", None))
        return int(args._module.run(args) or 0)
    except UserError as e:
        return fail(EXIT_USAGE, f"error: {e}")
    except Interrupted as e:
        print(f"{prefix}: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"{prefix}: interrupted", file=sys.stderr)
        return 130
    except MemoryError as e:
        return fail(EXIT_NO_MEMORY, f"error: out of memory ({e or 'MemoryError'}); use smaller images, batches or models")
    except OSError as e:
        return fail(EXIT_IO, f"error: {_os_error_message(e)}")
    except Exception as e:  # noqa: BLE001 - the last line of defence: one line, not a traceback
        hint = "" if debug else "; rerun with --debug for the traceback"
        return fail(EXIT_INTERNAL, f"internal error: {type(e).__name__}: {e}{hint}")


if __name__ == "__main__":
    sys.exit(main())
