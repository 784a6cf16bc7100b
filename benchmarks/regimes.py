"""The budgets (regimes) ``hdetr bench ablation --regime`` runs, each with its ``--quick`` check.

- ``toy``: the original budget (``ablation_setup.DEFAULT``): a ``tiny`` backbone trained from scratch on the
  flat shapes dataset (3.4 objects per image), 480 iterations. Kept for comparison with the results
  published for it.
- ``paper``: the paper's regime scaled to a 2-core CPU (design and reasons: docs/benchmarks.md, "Ablation
  in the paper's regime: design"): an ImageNet-pretrained EfficientNet-Lite0 backbone (lr x0.1, stem
  frozen) as the paper's ImageNet R50; COCO-like scenes (about 7 objects per image, 15 % with 20-30,
  small to large, textured, cluttered); 6 decoder layers so that the layer scheme is the paper's
  (L1 = 4, L2 = 2); N : M = 1 : 5, K = 6, rho = 2/3; lr drop at 11/12 of the schedule.
"""

from __future__ import annotations

import dataclasses

from .ablation_setup import DEFAULT, QUICK

PAPER = dataclasses.replace(
    DEFAULT,
    dataset="coco_like", backbone="efficientnet_lite0", backbone_weights="efficientnet_lite0_imagenet",
    lr_backbone_ratio=0.1, hidden_dim=128,
    train_images=160, val_images=100, image_size=128, train_scales=(120, 128, 136), crop=False, data_seed=0,
    epochs=12, lr_drop=11, batch_size=8, lr=2e-4, seeds=3,
    enc_layers=2, dec_layers=6, dim_feedforward=512, nheads=8, num_queries=50,
    num_queries_one2many=250, k=6, lambda_one2many=1.0, epoch_ratio=2 / 3, one2many_layers=4,
)
# --quick: the same model and data generator, few images and iterations; checks that every scheme runs.
PAPER_QUICK = dataclasses.replace(PAPER, train_images=24, val_images=12, epochs=2, lr_drop=1, seeds=1)

REGIMES = {"toy": (DEFAULT, QUICK), "paper": (PAPER, PAPER_QUICK)}
DESCRIPTIONS = {
    "toy": "the original budget: tiny backbone from scratch, flat shapes (3.4 objects/image), 480 iterations",
    "paper": "the paper's regime on a CPU: ImageNet EfficientNet-Lite0 (lr x0.1, frozen stem), COCO-like scenes "
             "(~7 objects/image, 15%% crowded), 6 decoder layers, lr drop at 11/12",
}


def regime_budget(name: str, quick: bool = False):
    from hdetr.errors import UserError

    if name not in REGIMES:
        raise UserError(f"--regime: unknown {name!r}; choose from {', '.join(REGIMES)}")
    full, short = REGIMES[name]
    return short if quick else full


def regime_help() -> str:
    return "the budget: " + "; ".join(f"{k} = {v}" for k, v in DESCRIPTIONS.items()) + " (default: paper)"
