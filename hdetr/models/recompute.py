"""Activation recomputation (``train.checkpoint_activations``, PyTorch's "activation checkpointing"):
keep fewer activations, recompute them in the backward pass.

``enable_checkpointing(module)`` makes a module run its forward under
``torch.utils.checkpoint.checkpoint(use_reentrant=False)`` while training with gradients enabled; in
eval mode or under ``no_grad`` it runs as before. It swaps the module's class for a subclass (the way
``torch.nn.utils.parametrize`` does), so parameter names, state dicts, hooks and ``deepcopy`` (EMA)
are unchanged, and the model code itself needs no switch.

``apply_activation_checkpointing(model, parts)`` applies it to every encoder layer, every decoder
layer and/or every backbone stage. The recomputation replays the same operations on the same
inputs with the same RNG state (dropout), so the gradients are those of the plain path.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

PARTS = ("encoder", "decoder", "backbone")
_CHECKPOINTED_CLASSES: dict[type, type] = {}


def _checkpointed_class(cls: type) -> type:
    if getattr(cls, "_hdetr_checkpointed", False):
        return cls
    new = _CHECKPOINTED_CLASSES.get(cls)
    if new is None:
        def forward(self, *args, **kwargs):
            plain = super(new, self).forward
            if self.training and torch.is_grad_enabled():
                return checkpoint(plain, *args, use_reentrant=False, **kwargs)
            return plain(*args, **kwargs)

        new = type(f"Checkpointed{cls.__name__}", (cls,), {"forward": forward, "_hdetr_checkpointed": True,
                                                          "__module__": cls.__module__})
        _CHECKPOINTED_CLASSES[cls] = new
    return new


def enable_checkpointing(module: nn.Module) -> nn.Module:
    """Run ``module``'s forward under activation checkpointing when training (in place; returns it)."""
    module.__class__ = _checkpointed_class(type(module))
    return module


def is_checkpointed(module: nn.Module) -> bool:
    return getattr(type(module), "_hdetr_checkpointed", False)


def apply_activation_checkpointing(model: nn.Module, parts) -> list[str]:
    """Checkpoint ``parts`` (a subset of encoder, decoder, backbone) of an ``HDETR``; returns the
    names of the modules now checkpointed."""
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise ValueError(f"unknown checkpoint_activations part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    targets: list[tuple[str, nn.Module]] = []
    if "encoder" in parts:
        targets += [(f"transformer.encoder_layers.{i}", m) for i, m in enumerate(model.transformer.encoder_layers)]
    if "decoder" in parts:
        targets += [(f"transformer.decoder_layers.{i}", m) for i, m in enumerate(model.transformer.decoder_layers)]
    if "backbone" in parts:
        names = {id(m): n for n, m in model.backbone.named_modules()}
        targets += [(f"backbone.{names[id(m)]}", m) for m in model.backbone.stages()]
    for _, module in targets:
        enable_checkpointing(module)
    return [name for name, _ in targets]
