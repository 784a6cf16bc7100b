"""Training-trajectory conformance: every case of kind "trajectory" (tests/support/conformance_trajectory.py)
replayed through hdetr's training step, compared step by step with the official run.

Cases come from the fixtures or HDETR_CONFORMANCE_DIR; each runs on both attention paths
(HDETR_ATTENTION_IMPL=fast or =reference restricts it to one). Tolerances are the manifest's
``tolerance.recommended``; what is compared is what expected.safetensors holds.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
from safetensors.torch import load_file

from support.conformance_cases import IMPLS, case_dirs, case_fixture
from support.conformance_trajectory import official_to_hdetr_name, run_trajectory

pytestmark = pytest.mark.slow

case = case_fixture("trajectory", lambda path, impl: (run_trajectory(path, attention_impl=impl),
                                                      load_file(str(path / "expected.safetensors"))))


def tol(manifest: dict, group: str) -> dict | None:
    """{"rtol", "atol"} of a group, or None where the manifest asks for exact equality."""
    rec = manifest["tolerance"]["recommended"]
    assert group in rec, f"the manifest gives no tolerance for {group}"
    value = rec[group]
    if isinstance(value, str):
        assert value.startswith("exact"), f"tolerance for {group}: {value!r}"
        return None
    return {"rtol": value.get("rtol", 0.0), "atol": value.get("atol", 0.0)}


def close(ours: torch.Tensor, ref: torch.Tensor, t: dict | None, what: str) -> None:
    assert ours.shape == ref.shape, f"{what}: shape {tuple(ours.shape)} vs {tuple(ref.shape)}"
    if t is None:
        assert torch.equal(ours.to(ref.dtype), ref), f"{what}: {ours.tolist()} vs {ref.tolist()}"
    else:
        torch.testing.assert_close(ours.to(ref.dtype), ref, rtol=t["rtol"], atol=t["atol"], msg=lambda m: f"{what}: {m}")


def num_steps(expected: dict) -> int:
    return len({k.split("/")[0] for k in expected if k.startswith("step")})


def test_the_fixtures_hold_a_trajectory_case():
    if "HDETR_CONFORMANCE_DIR" in os.environ:
        pytest.skip("HDETR_CONFORMANCE_DIR may hold cases of other kinds only")
    assert case_dirs("trajectory"), "no trajectory conformance case under tests/fixtures/conformance"
    assert IMPLS, "HDETR_ATTENTION_IMPL must be fast or reference"


def test_parameter_groups_are_the_official_ones(case):
    run, _ = case
    official = run.manifest["optimizer"]["param_groups"]
    assert len(run.group_names) == len(official)
    for ours, ref in zip(run.optimizer.param_groups, official):
        i = ref["index"]
        want = sorted(official_to_hdetr_name(run.manifest, n) for n in ref["param_names"])
        assert sorted(run.group_names[i]) == want, f"group {i} ({ref['built_as']})"
        assert ours["initial_lr"] == ref["initial_lr"], f"group {i} lr"
        for key in ("weight_decay", "eps", "amsgrad", "maximize", "foreach", "fused", "capturable",
                    "differentiable", "decoupled_weight_decay"):
            if key in ref:
                assert ours.get(key) == ref[key], f"group {i} {key}: {ours.get(key)} vs {ref[key]}"
        assert list(ours["betas"]) == list(ref["betas"]), f"group {i} betas"


def test_steps_and_lr(case):
    run, expected = case
    assert len(run.steps) == run.manifest["derived"]["num_steps"] == num_steps(expected)
    for s, step in enumerate(run.steps):
        close(torch.tensor(step.lr, dtype=torch.float64), expected[f"step{s}/lr"], tol(run.manifest, "lr"), f"step {s} lr")
    final = torch.tensor([g["lr"] for g in run.optimizer.param_groups], dtype=torch.float64)
    close(final, expected["final/lr"], tol(run.manifest, "lr"), "final lr")


def test_losses(case):
    run, expected = case
    t = tol(run.manifest, "loss")
    for s, step in enumerate(run.steps):
        keys = {k[len(f"step{s}/loss."):] for k in expected if k.startswith(f"step{s}/loss.")}
        ours = set(step.logs) - {"loss", "grad_norm"}
        assert keys == ours, f"step {s}: loss terms differ: {sorted(keys ^ ours)}"
        for key in sorted(keys):
            close(torch.tensor(step.logs[key]), expected[f"step{s}/loss.{key}"], t, f"step {s} {key}")
        close(torch.tensor(step.logs["loss"]), expected[f"step{s}/loss_total"], t, f"step {s} loss_total")


def test_grad_norms(case):
    run, expected = case
    t = tol(run.manifest, "grad_norm")
    for s, step in enumerate(run.steps):
        close(torch.tensor(step.logs["grad_norm"]), expected[f"step{s}/grad_norm"], t, f"step {s} grad_norm")
    if run.manifest.get("checks", {}).get("every_parameter_got_a_gradient_every_step"):
        for s, step in enumerate(run.steps):
            assert not step.without_grad, f"step {s}: no gradient for {step.without_grad[:5]}"


def test_outputs(case):
    run, expected = case
    t = tol(run.manifest, "outputs")
    for s, step in enumerate(run.steps):
        keys = [k for k in expected if k.startswith(f"step{s}/out.")]
        assert keys, f"step {s}: the case holds no outputs"
        for key in keys:
            name = key.split("/", 1)[1]
            assert name in step.outputs, f"hdetr produced no {name}"
            close(step.outputs[name], expected[key], t, f"step {s} {name}")


def test_matches(case):
    run, expected = case
    assert tol(run.manifest, "match") is None
    for s, step in enumerate(run.steps):
        calls = sorted({k.split("/", 1)[1].rsplit(".", 2)[0][len("match."):] for k in expected
                        if k.startswith(f"step{s}/match.")})
        assert set(calls) <= set(step.matches), f"step {s}: no matcher call {set(calls) - set(step.matches)}"
        for call in calls:
            for b, (q, tgt) in enumerate(step.matches[call]):
                ref_q = expected[f"step{s}/match.{call}.{b}.query_idx"]
                ref_t = expected[f"step{s}/match.{call}.{b}.target_idx"]
                where = f"step {s} {call} image {b}"
                assert torch.equal(q, ref_q), f"{where}: queries {q.tolist()} vs {ref_q.tolist()}"
                n = step.num_gt[b]
                if call.startswith("one2many") and n:
                    # The K copies of a ground truth have identical costs: compare modulo the copy.
                    assert torch.equal(tgt % n, ref_t % n), where
                else:
                    assert torch.equal(tgt, ref_t), f"{where}: targets {tgt.tolist()} vs {ref_t.tolist()}"


def test_final_weights(case):
    run, expected = case
    t = tol(run.manifest, "final.state")
    p99 = run.manifest["tolerance"]["recommended"]["final.state.p99"]["max"]
    ours = run.model.state_dict()
    keys = [k for k in expected if k.startswith("final/state.")]
    assert keys
    diffs = []
    for key in keys:
        name = official_to_hdetr_name(run.manifest, key[len("final/state."):])
        assert name in ours, f"hdetr has no {name}"
        close(ours[name], expected[key], t, f"final {name}")
        if ours[name].is_floating_point():
            diffs.append((ours[name].float() - expected[key].float()).abs().flatten())
    diffs = torch.cat(diffs)
    pct = float(diffs.kthvalue(math.ceil(0.99 * diffs.numel())).values)  # the 99th percentile, rounded up
    assert pct <= p99, f"99th percentile of |final weight diff| {pct:.3g} > {p99:.3g}"


def test_final_optimizer_moments(case):
    run, expected = case
    params = dict(run.model.named_parameters())
    keys = [k for k in expected if k.startswith("final/optimizer.")]
    recorded = run.manifest["optimizer"].get("state_recorded_for", [])
    assert {k[len("final/optimizer."):].rsplit(".", 1)[0] for k in keys} == set(recorded)
    for key in keys:
        official, moment = key[len("final/optimizer."):].rsplit(".", 1)
        name = official_to_hdetr_name(run.manifest, official)
        state = run.optimizer.state[params[name]]
        close(torch.as_tensor(state[moment]).float(), expected[key].float(),
              tol(run.manifest, f"final.optimizer.{moment}"), f"{name} {moment}")
    counts = sorted({int(s["step"]) for s in run.optimizer.state.values()})
    want = run.manifest["optimizer"].get("adam_step_count_of_every_parameter")
    if want is not None:
        assert counts == want, f"Adam step counts {counts} vs {want}"
        assert len(run.optimizer.state) == len(params), "every parameter has an optimizer state"
