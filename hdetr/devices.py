"""``--device``: one definition for every verb and for the Python API.

``auto`` (the default everywhere) is the first CUDA device when torch sees one, else the CPU. Parsing
stays free of torch (``hdetr VERB --help`` answers at once); torch is imported when a device is resolved.
"""

from __future__ import annotations

AUTO = "auto"
DEVICE_HELP = "auto (cuda when available, else cpu), cpu, cuda or cuda:N (default: auto)"


def add_device_argument(p, extra: str = "") -> None:
    p.add_argument("--device", default=AUTO, help=DEVICE_HELP + extra)


def resolve_device(device=AUTO):
    """``auto`` or None -> ``cuda`` when available, else ``cpu``; anything else as given (a str or a
    ``torch.device``)."""
    if device is None or (isinstance(device, str) and device == AUTO):
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device
