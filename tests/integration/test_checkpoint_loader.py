"""One loader for everything a user can point at; every verb accepts the same things (export included)."""

from __future__ import annotations

import pytest
import torch

from hdetr.weights import load_weights
from hdetr.cli import main
from hdetr.config import load_config
from hdetr.engine.train import train
from hdetr.errors import UserError
from support.engine_helpers import load_state, tiny_overrides


@pytest.fixture(scope="module")
def run_dir(synth_data, module_dir):
    """One epoch (4 steps) with EMA and an evaluation: last.pt, best.pt and model/ all exist."""
    out = module_dir("run")
    train(load_config(None, tiny_overrides(synth_data, "train.epochs=1", "train.ema=true")), out, progress=False)
    return out


def test_every_form_of_a_run_gives_its_evaluated_weights(run_dir):
    ema = load_state(run_dir / "last.pt")["ema"]["module"]
    for path, kind in [(run_dir, "model folder"), (run_dir / "model", "model folder"),
                       (run_dir / "model" / "model.safetensors", "model folder"), (run_dir / "best.pt", "best.pt"),
                       (run_dir / "last.pt", "training checkpoint")]:
        loaded = load_weights(path)
        assert loaded.kind == kind, path
        assert loaded.class_names == ["circle", "square", "triangle", "cross"], path
        assert loaded.category_map is not None and loaded.category_map.num_classes == 4
        assert loaded.state.keys() == ema.keys()
        for k in ema:  # the EMA weights: what training evaluated and exported, not the raw ones
            assert torch.equal(loaded.state[k], ema[k]), (path, k)
    assert load_weights(run_dir / "last.pt").ema


def test_a_run_folder_without_model_folder_falls_back_to_its_checkpoints(run_dir, tmp_path):
    import shutil

    shutil.copy(run_dir / "last.pt", tmp_path / "last.pt")
    assert load_weights(tmp_path).kind == "training checkpoint"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="neither a model folder"):
        load_weights(empty)


def test_export_hands_the_exporter_the_same_model_from_every_form(run_dir, tmp_path, monkeypatch):
    """``hdetr export`` of a run folder, best.pt, last.pt, the model folder or its weights file: the exporter
    gets the evaluated (EMA) weights, the class names and the category map each time. What the exporter
    makes of them (graph, metadata) is tested in test_export.py, on a model folder; an export costs tens
    of CPU-seconds, so it is not repeated here for every form."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    import hdetr.export as export_module

    ema = load_state(run_dir / "last.pt")["ema"]["module"]
    calls = []

    def fake_export(model, path, **kwargs):
        calls.append((model.state_dict(), kwargs))
        return export_module.ExportResult(path, 0.0, kwargs["opset"], kwargs["postprocess"], 0)

    monkeypatch.setattr(export_module, "export_onnx", fake_export)
    forms = [run_dir, run_dir / "best.pt", run_dir / "last.pt", run_dir / "model", run_dir / "model" / "model.safetensors"]
    for n, src in enumerate(forms):
        assert main(["export", str(src), str(tmp_path / f"m{n}.onnx"), "--no-verify"]) == 0
    assert len(calls) == len(forms)
    for (state, kwargs), src in zip(calls, forms):
        assert kwargs["class_names"] == ["circle", "square", "triangle", "cross"], src
        assert kwargs["category_map"]["names"] == kwargs["class_names"], src
        assert kwargs["config"].model.num_classes == 4, src
        for k in ema:
            assert torch.equal(state[k], ema[k]), (src, k)
