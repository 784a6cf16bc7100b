"""onnxruntime execution providers by short name, the TensorBoard tracker's check, the shared --device."""

from __future__ import annotations

import argparse
import importlib.util

import pytest

from hdetr.config import ConfigError, build_config
from hdetr.devices import DEVICE_HELP, add_device_argument, resolve_device
from hdetr.errors import UserError


def test_providers_by_short_or_full_name_with_the_cpu_as_fallback():
    ort = pytest.importorskip("onnxruntime")
    from hdetr.runtime import resolve_providers

    assert resolve_providers(None) == ["CPUExecutionProvider"]
    assert resolve_providers("cpu") == ["CPUExecutionProvider"]
    assert resolve_providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" in available:
        assert resolve_providers("cuda") == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    else:
        with pytest.raises(UserError, match=r"'cuda' is not offered by the installed onnxruntime .*onnxruntime-gpu"
                                            r".*available here: .*CPUExecutionProvider") as e:
            resolve_providers("cuda,cpu")
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("bad, match", [("cuad", r"'cuad' is unknown; short names: .*cuda"),
                                        (",", "give at least one"), ([3], "expected names")])
def test_a_provider_typo_is_refused_in_one_line(bad, match):
    pytest.importorskip("onnxruntime")
    from hdetr.runtime import resolve_providers

    with pytest.raises(UserError, match=match) as e:
        resolve_providers(bad)
    assert "\n" not in str(e.value)


def test_tensorboard_is_a_tracker_that_must_be_installed_when_named(tmp_path):
    from hdetr.engine.trackers import Trackers

    assert build_config({}, ["train.trackers=[tensorboard]"]).train.trackers == ["tensorboard"]
    with pytest.raises(ConfigError, match="unknown tracker.*available: mlflow, wandb, tensorboard"):
        build_config({}, ["train.trackers=[tensorbord]"])
    if importlib.util.find_spec("tensorboard") is None:
        with pytest.raises(UserError, match=r"tensorboard is not installed; pip install 'hdetr\[tensorboard\]'"):
            Trackers(["tensorboard"], tmp_path, {}, resume=False)
    else:
        assert Trackers(["tensorboard"], tmp_path, {}, resume=False).items == {}


def test_device_auto_is_the_one_default():
    import torch

    p = argparse.ArgumentParser()
    add_device_argument(p)
    action = next(a for a in p._actions if a.dest == "device")
    assert action.default == "auto" and action.help == DEVICE_HELP
    assert resolve_device("auto") == resolve_device(None) == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu"


def test_every_verb_with_a_device_shares_the_definition():
    from hdetr.cli import build_parser

    parser = build_parser()
    verbs = parser._subparsers._group_actions[0].choices
    with_device = {name: next(a for a in sub._actions if a.dest == "device")
                   for name, sub in verbs.items() if any(a.dest == "device" for a in sub._actions)}
    assert {"train", "eval", "predict", "serve", "demo"} <= set(with_device)
    for name, action in with_device.items():
        if name != "bench":  # the benchmarks measure a device they name
            assert action.default == "auto" and action.help.startswith(DEVICE_HELP), name
