"""Conformance of hdetr's backbones with the official ones, for every case folder of kind "backbone".

Each case (tests/fixtures/conformance/*, or HDETR_CONFORMANCE_DIR: a folder of cases or one case
folder) is run through hdetr's backbone construction and official-checkpoint key mapping
(tests/support/conformance_backbone.py). ``model.attention_impl`` (fast | reference) selects the paths of the
deformable attention and of the decoder's self-attention only; the backbone has no such switch, so
each case runs once.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from support.conformance_cases import case_dirs
from support.conformance_backbone import rebuilt_buffers, run_backbone_case

CASES = case_dirs("backbone")


@pytest.fixture(scope="module", params=CASES, ids=[c.name for c in CASES])
def case(request):
    torch.set_num_threads(2)
    return request.param, run_backbone_case(request.param)


def feature_tolerance(manifest: dict) -> dict:
    rec = manifest.get("tolerance", {}).get("recommended", {}).get("features", {})
    return {"rtol": rec.get("rtol", 1e-4), "atol": rec.get("atol", 1e-4)}


def expected_levels(expected: dict, name: str, what: str) -> list[torch.Tensor]:
    keys = sorted((k for k in expected if k.startswith(f"{name}.{what}.")), key=lambda k: int(k.rsplit(".", 1)[1]))
    return [expected[k] for k in keys]


def test_features_match_the_official_backbone(case):
    path, run = case
    expected = load_file(str(path / "expected.safetensors"))
    tol = feature_tolerance(run.manifest)
    assert run.features, "the case has no inputs"
    failures = []
    for name, feats in run.features.items():
        ref = expected_levels(expected, name, "features")
        assert len(feats) == len(ref), f"{name}: {len(feats)} levels vs {len(ref)}"
        for level, (ours, theirs) in enumerate(zip(feats, ref)):
            assert ours.shape == theirs.shape, f"{name} level {level}: {tuple(ours.shape)} vs {tuple(theirs.shape)}"
            if not torch.allclose(ours, theirs.float(), **tol):
                failures.append(f"{name}.features.{level}: max |diff| {(ours - theirs).abs().max():.3g}")
    assert not failures, f"features differ beyond {tol}: " + "; ".join(failures)


def test_masks_match_exactly(case):
    path, run = case
    expected = load_file(str(path / "expected.safetensors"))
    for name, masks in run.masks.items():
        ref = expected_levels(expected, name, "masks")
        assert len(masks) == len(ref)
        for level, (ours, theirs) in enumerate(zip(masks, ref)):
            assert torch.equal(ours, theirs.bool()), f"{name}.masks.{level}"


def test_official_buffers_that_hdetr_rebuilds_are_equal(case):
    _, run = case
    for name, (ours, theirs) in rebuilt_buffers(run).items():
        assert ours is not None, f"hdetr has no buffer {name} for the official one"
        assert torch.equal(ours, theirs.to(ours.dtype)), f"{name} differs from the official buffer"
