"""Runs one conformance case of kind "backbone" through hdetr's own backbone.

A case holds an official backbone's weights (official key names), image batches with their padding
masks, and the multi-scale features and masks the official Joiner returns. Everything comes from the
case's manifest.json: the backbone is configured from the official arguments (``config.args``), a Swin
whose dimensions were changed for the case (``config.swin_override``) is described by its dimensions
(``derived.swin``), the weights go through hdetr's official-checkpoint key mapping, and the backbone is
built by ``hdetr.models.backbone.build_backbone``, as the detector builds it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from hdetr.weights import convert_official_state_dict, official_args_to_config, rebuilt_buffer_name, safe_torch_load
from hdetr.config import Config, build_config
from hdetr.models.backbone import build_backbone
from hdetr.models.position_encoding import downsample_mask

# Swin settings hdetr does not expose because every official variant has these values.
FIXED_SWIN_SETTINGS = {"patch_size": 4, "mlp_ratio": 4.0, "qkv_bias": True, "qk_scale": None, "ape": False,
                       "patch_norm": True, "out_indices": [1, 2, 3], "drop_rate": 0.0, "attn_drop_rate": 0.0}


def backbone_config(manifest: dict, official_state: dict[str, torch.Tensor]) -> Config:
    cfg = official_args_to_config(manifest["config"]["args"], official_state)
    swin = manifest.get("derived", {}).get("swin")
    if swin is not None:
        wrong = {k: swin[k] for k, v in FIXED_SWIN_SETTINGS.items() if k in swin and swin[k] != v}
        if wrong:
            raise AssertionError(f"the case's Swin has settings hdetr cannot describe: {wrong}")
        assert swin["drop_path_rate"] == cfg.model.swin.drop_path_rate
    if manifest["config"].get("swin_override"):
        data = cfg.to_dict()
        data["model"]["backbone"] = "swin"
        data["model"]["swin"].update({k: swin[k] for k in ("embed_dim", "depths", "num_heads", "window_size")})
        cfg = build_config(data)
    return cfg


@dataclass
class BackboneRun:
    manifest: dict
    cfg: Config
    backbone: torch.nn.Module
    official_state: dict[str, torch.Tensor]
    features: dict[str, list[torch.Tensor]] = field(default_factory=dict)  # by input name, per level
    masks: dict[str, list[torch.Tensor]] = field(default_factory=dict)


def run_backbone_case(case: Path) -> BackboneRun:
    manifest = json.loads((case / "manifest.json").read_text())
    official_state = {k: v.float() if v.is_floating_point() else v
                      for k, v in safe_torch_load(case / "checkpoint.pth")["model"].items()}
    cfg = backbone_config(manifest, official_state)
    torch.manual_seed(0)
    backbone = build_backbone(cfg.model)
    converted = convert_official_state_dict(official_state)
    outside = sorted(k for k in converted if not k.startswith("backbone."))
    if outside:
        raise AssertionError(f"checkpoint keys that do not map into the backbone: {outside[:5]}")
    backbone.load_state_dict({k[len("backbone."):]: v for k, v in converted.items()}, strict=True)
    backbone.eval()
    run = BackboneRun(manifest, cfg, backbone, official_state)
    inputs = load_file(str(case / "inputs.safetensors"))
    for name in sorted({k.rsplit(".", 1)[0] for k in inputs if k.endswith(".images")}):
        mask = inputs[f"{name}.mask"].bool()
        with torch.no_grad():
            feats = backbone(inputs[f"{name}.images"].float())
        run.features[name] = feats
        # The detector's mask path (HDETR.forward): the image mask resized to each feature map.
        run.masks[name] = [downsample_mask(mask, f.shape[-2:]) for f in feats]
    return run


def rebuilt_buffers(run: BackboneRun) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Official buffers hdetr does not load but rebuilds: hdetr name -> (hdetr's, official)."""
    ours = {f"backbone.{k}": v for k, v in run.backbone.named_buffers()}
    out = {}
    for key, value in run.official_state.items():
        name = rebuilt_buffer_name(key)
        if name is not None:
            out[name] = (ours.get(name), value)
    return out


def max_differences(case: Path) -> dict[str, float]:
    """Max |ours - official| per input and level of a backbone case (for reports; the test checks tolerances)."""
    run = run_backbone_case(case)
    expected = load_file(str(case / "expected.safetensors"))
    return {f"{name}.features.{level}": float((f - expected[f"{name}.features.{level}"].float()).abs().max())
            for name, feats in run.features.items() for level, f in enumerate(feats)}


if __name__ == "__main__":  # python tests/support/conformance_backbone.py CASE_DIR
    import sys

    torch.set_num_threads(2)
    for key, diff in max_differences(Path(sys.argv[1])).items():
        print(f"{key}: max |diff| {diff:.3g}")
