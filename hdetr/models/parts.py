"""Which part of the detector a tensor belongs to (``train.init_parts``, ``train.freeze``).

- ``backbone``: the image feature extractor;
- ``encoder``: input projections, level embeddings, the encoder layers;
- ``decoder``: the decoder layers, the two-stage proposal layers, query embeddings, reference points;
- ``heads``: the class and box heads (every decoder layer's and the two-stage encoder's).
"""

from __future__ import annotations

from torch import nn

ENCODER_PREFIXES = ("input_projections.", "transformer.level_embed", "transformer.encoder_layers.")
HEAD_PREFIXES = ("class_heads.", "box_heads.")
CLASS_HEAD_PREFIX = "class_heads."
QUERY_EMBEDDING = "query_embedding.weight"


def part_of(name: str) -> str:
    """The part a parameter or buffer name of ``HDETR.state_dict()`` belongs to."""
    if name.startswith("backbone."):
        return "backbone"
    if name.startswith(ENCODER_PREFIXES):
        return "encoder"
    if name.startswith(HEAD_PREFIXES):
        return "heads"
    return "decoder"


def freeze(model: nn.Module, parts: tuple[str, ...]) -> list[str]:
    """Turn off gradients of every parameter in ``parts``; returns the names frozen here.

    Call before the optimizer is built: it only takes parameters that require gradients, so frozen
    ones get no update and no weight decay and stay bit-identical.
    """
    frozen = []
    for name, p in model.named_parameters():
        if part_of(name) in parts and p.requires_grad:
            p.requires_grad_(False)
            frozen.append(name)
    return frozen
