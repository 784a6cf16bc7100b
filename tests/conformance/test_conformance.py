"""Conformance with the official H-Deformable-DETR, for every single-step case folder (run by
tests/support/conformance.py; which cases there are: tests/support/conformance_cases.py).

Cases of the other kinds run in test_conformance_<kind>.py beside this file. Set HDETR_CONFORMANCE_DIR
to run other case folders of the same format. Every case runs with both computation paths
(``model.attention_impl`` fast and reference); HDETR_ATTENTION_IMPL=fast or =reference restricts the
run to one.
"""

from __future__ import annotations

import torch
import pytest
from safetensors.torch import load_file

from support.conformance import run_case
from support.conformance_cases import IMPLS, KINDS, case_dirs, case_fixture, case_kind

pytestmark = pytest.mark.slow

case = case_fixture("step", lambda path, impl: (path, run_case(path, attention_impl=impl)))


def tol(manifest: dict, group: str) -> dict:
    rec = manifest.get("tolerance", {}).get("recommended", {}).get(group, {})
    return {"rtol": rec.get("rtol", 1e-4), "atol": rec.get("atol", 1e-5)}


def test_there_are_cases():
    assert case_dirs(), "no conformance case folders found"
    assert IMPLS, "HDETR_ATTENTION_IMPL must be fast or reference"


def test_every_case_has_a_known_kind():
    unknown = {c.name: case_kind(c) for c in case_dirs() if case_kind(c) not in KINDS}
    assert not unknown, f"case folders of a kind no test runs (known: {', '.join(KINDS)}): {unknown}"


def test_train_outputs(case):
    path, run = case
    expected = load_file(str(path / "expected_train.safetensors"))
    keys = [k for k in expected if k.startswith("out.")]
    assert keys
    t = tol(run.manifest, "forward_outputs")
    for key in keys:
        assert key in run.train_out, f"hdetr produced no {key}"
        ours, ref = run.train_out[key], expected[key].float()
        assert ours.shape == ref.shape, f"{key}: shape {tuple(ours.shape)} vs {tuple(ref.shape)}"
        torch.testing.assert_close(ours.detach(), ref, **t, msg=lambda m: f"{key}: {m}")
        if key.endswith("enc_outputs.pred_boxes"):
            invalid = (ref == 1.0).all(-1)
            assert (ours.detach()[invalid] == 1.0).all(), "invalid proposal tokens must give boxes of exactly 1.0"


def test_losses(case):
    path, run = case
    expected = load_file(str(path / "expected_train.safetensors"))
    t = tol(run.manifest, "losses")
    loss_keys = [k[len("loss."):] for k in expected if k.startswith("loss.")]
    assert loss_keys
    assert set(loss_keys) == set(run.losses), f"loss terms differ: {set(loss_keys) ^ set(run.losses)}"
    for key in loss_keys:
        torch.testing.assert_close(run.losses[key].detach().float(), expected[f"loss.{key}"].float(), **t,
                                   msg=lambda m: f"{key}: {m}")
    torch.testing.assert_close(run.loss_total.detach(), expected["loss_total"].float(), **t)


def test_gradients(case):
    path, run = case
    expected = load_file(str(path / "expected_train.safetensors"))
    gn_rtol = run.manifest.get("tolerance", {}).get("recommended", {}).get("grad_norm", {}).get("rtol", 1e-3)
    assert run.grad_norm == pytest.approx(float(expected["grad_norm"]), rel=gn_rtol)
    t = tol(run.manifest, "gradients")
    grad_keys = [k for k in expected if k.startswith("grad.") and k != "grad_norm"]
    for key in grad_keys:
        name = key[len("grad."):]
        assert name in run.grads, f"no gradient for {name}"
        torch.testing.assert_close(run.grads[name], expected[key].float(), **t, msg=lambda m: f"{name}: {m}")
    norms = run.manifest.get("gradients", {}).get("per_parameter_grad_l2_norm", {})
    for name, ref in norms.items():
        assert name in run.grads, f"no gradient for {name}"
        assert float(run.grads[name].norm()) == pytest.approx(ref, rel=gn_rtol, abs=1e-6), name


def test_matching(case):
    path, run = case
    expected = load_file(str(path / "expected_train.safetensors"))
    calls = sorted({k.rsplit(".", 2)[0] for k in expected if k.startswith("match.")})
    assert calls
    for call in calls:
        name = call[len("match."):]
        assert name in run.matches, f"no matcher call {name}"
        for b, (q, t) in enumerate(run.matches[name]):
            ref_q = expected[f"{call}.{b}.query_idx"]
            ref_t = expected[f"{call}.{b}.target_idx"]
            assert torch.equal(q, ref_q), f"{name} image {b}: queries {q.tolist()} vs {ref_q.tolist()}"
            if name.startswith("one2many"):
                # The K copies of a ground truth have identical costs: compare modulo the copy.
                n = run.num_gt[b]
                if n == 0:
                    assert len(t) == len(ref_t) == 0, f"{name} image {b}: matches for an image without boxes"
                else:
                    assert torch.equal(t % n, ref_t % n), f"{name} image {b}"
            else:
                assert torch.equal(t, ref_t), f"{name} image {b}: targets {t.tolist()} vs {ref_t.tolist()}"


def test_eval_outputs_and_postprocess(case):
    path, run = case
    expected = load_file(str(path / "expected_eval.safetensors"))
    t = tol(run.manifest, "forward_outputs")
    for key in (k for k in expected if k.startswith("out.")):
        assert key in run.eval_out, f"hdetr produced no eval {key}"
        assert run.eval_out[key].shape == expected[key].shape, key
        torch.testing.assert_close(run.eval_out[key], expected[key].float(), **t, msg=lambda m: f"{key}: {m}")
    gap = run.manifest.get("checks", {}).get("post_scores_min_gap_between_consecutive", 1.0)
    for b, det in enumerate(run.post):
        if f"post.{b}.scores" not in expected:
            continue
        torch.testing.assert_close(det["scores"], expected[f"post.{b}.scores"].float(), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(det["boxes"], expected[f"post.{b}.boxes"].float(), rtol=1e-4, atol=1e-3)
        if gap > 1e-4:
            assert torch.equal(det["labels"], expected[f"post.{b}.labels"])
        else:
            # Near-tied scores may swap order: compare the detections as sets of (query, label).

            flat = expected[f"post.{b}.flat_index"]
            num_classes = run.eval_out["out.pred_logits"].shape[-1]
            ours = sorted((det["query_index"] * num_classes + det["labels"]).tolist())
            assert ours == sorted(flat.tolist())
