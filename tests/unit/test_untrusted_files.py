"""Untrusted files: nothing hdetr reads (configs, checkpoints, model files, datasets) may run code.

A static scan of hdetr/ refuses the calls that could (eval/exec, pickle, torch.load without
weights_only=True, yaml.load without SafeLoader, shell=True...), and the loaders are fed hostile or
damaged files. docs/reliability.md lists the rules."""

from __future__ import annotations

import ast
import pickle
import textwrap
from pathlib import Path

import pytest
import torch

from hdetr.weights import CheckpointError, load_model_files, safe_torch_load, save_model
from hdetr.config import ConfigError, build_config, load_config, load_yaml, parse_overrides
from support.paths import REPO

SOURCES = REPO / "hdetr"


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        # A method of a computed object (``f(x).eval()``) is never the builtin: keep a placeholder base.
        return f"{base}.{node.attr}" if base else f"<expr>.{node.attr}"
    return ""


def _kw(call: ast.Call, name: str):
    for k in call.keywords:
        if k.arg == name:
            return k.value
    return None


def _is_true(node) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def find_unsafe_calls(source: str, filename: str = "<src>") -> list[str]:
    """``file:line: what`` for every call that can run code from data."""
    found = []
    tree = ast.parse(source, filename)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                if _dotted(t).rsplit(".", 1)[-1] in ("LOAD_TRUNCATED_IMAGES", "MAX_IMAGE_PIXELS"):
                    found.append(f"{filename}:{node.lineno}: sets PIL's {_dotted(t)} (truncated images / bombs)")
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        last = name.rsplit(".", 1)[-1]
        why = None
        if name in ("eval", "exec", "builtins.eval", "builtins.exec", "__import__"):
            why = f"{name}()"
        elif name in ("pickle.load", "pickle.loads", "pickle.Unpickler", "cPickle.load", "cPickle.loads",
                      "dill.load", "dill.loads", "marshal.load", "marshal.loads", "shelve.open",
                      "joblib.load", "torch.jit.load"):
            why = f"{name}() runs code from the file"
        elif name == "torch.load" and not _is_true(_kw(node, "weights_only")):
            why = "torch.load() without weights_only=True"
        elif name in ("yaml.unsafe_load", "yaml.full_load", "yaml.unsafe_load_all", "yaml.full_load_all"):
            why = f"{name}()"
        elif name in ("yaml.load", "yaml.load_all"):
            loader = _kw(node, "Loader") or (node.args[1] if len(node.args) > 1 else None)
            if loader is None or _dotted(loader).rsplit(".", 1)[-1] not in ("SafeLoader", "CSafeLoader"):
                why = f"{name}() without Loader=SafeLoader"
        elif name.startswith("subprocess.") and _is_true(_kw(node, "shell")):
            why = f"{name}(shell=True)"
        elif name in ("os.system", "os.popen"):
            why = f"{name}() runs a shell"
        elif last == "load" and name.startswith(("np.", "numpy.")) and _is_true(_kw(node, "allow_pickle")):
            why = f"{name}(allow_pickle=True)"
        if why:
            found.append(f"{filename}:{node.lineno}: {why}")
    return found


def test_scanner_catches_every_pattern():
    bad = textwrap.dedent("""
        import pickle, torch, yaml, subprocess, os, numpy as np
        eval("1")
        exec("x = 1")
        pickle.load(f)
        pickle.loads(b)
        torch.load(p)
        torch.load(p, weights_only=False)
        yaml.load(s)
        yaml.load(s, Loader=yaml.Loader)
        yaml.unsafe_load(s)
        subprocess.run("ls", shell=True)
        os.system("ls")
        np.load(p, allow_pickle=True)
        ImageFile.LOAD_TRUNCATED_IMAGES = True
        Image.MAX_IMAGE_PIXELS = None
    """)
    assert len(find_unsafe_calls(bad)) == 14
    good = textwrap.dedent("""
        model.eval()
        copy.deepcopy(model).eval()
        torch.load(p, map_location="cpu", weights_only=True)
        yaml.safe_load(s)
        yaml.load(s, Loader=yaml.SafeLoader)
        subprocess.run(["ls"], check=True)
        np.load(p)
        except pickle.UnpicklingError: pass
    """).replace("except pickle.UnpicklingError: pass", "x = pickle.UnpicklingError")
    assert find_unsafe_calls(good) == []


def test_no_unsafe_calls_in_hdetr_sources():
    files = sorted(SOURCES.rglob("*.py"))
    assert len(files) > 10
    found = [hit for f in files for hit in find_unsafe_calls(f.read_text(), str(f.relative_to(SOURCES.parent)))]
    assert found == [], "calls that can run code from a file:\n" + "\n".join(found)


# --- configs -----------------------------------------------------------------


@pytest.mark.parametrize("payload", [
    "!!python/object/apply:os.system ['echo pwned']",
    "!!python/object:argparse.Namespace {}",
    "!!python/name:os.system",
])
def test_yaml_config_with_python_tag_is_refused(tmp_path, payload):
    cfg = tmp_path / "evil.yaml"
    cfg.write_text(f"train:\n  lr: {payload}\n")
    with pytest.raises(ConfigError, match=r"evil\.yaml: refused: the YAML tag !!python/.*line 2.*plain values"):
        load_yaml(cfg)
    with pytest.raises(ConfigError, match="refused"):
        load_config(str(cfg))


def test_override_with_python_tag_is_refused():
    with pytest.raises(ConfigError, match=r"override .train.lr=.*refused.*!!python/object/apply:os.system"):
        parse_overrides(["train.lr=!!python/object/apply:os.system ['echo pwned']"])
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_overrides(["train.lr=[1, 2"])
    with pytest.raises(ConfigError, match="refused"):
        build_config({"data": {"train_scales": "!!python/name:os.system"}})


def test_yaml_base_loop_and_binary_config(tmp_path):
    (tmp_path / "a.yaml").write_text("_base_: b.yaml\n")
    (tmp_path / "b.yaml").write_text("_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="loop"):
        load_yaml(tmp_path / "a.yaml")
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00\x01")
    with pytest.raises(ConfigError, match=r"bin\.yaml"):
        load_yaml(tmp_path / "bin.yaml")


# --- model files and checkpoints ---------------------------------------------


def _model_folder(tmp_path) -> Path:
    cfg = build_config({}, ["model.num_classes=3"])
    return save_model(tmp_path / "m", cfg, {"w": torch.arange(6.0).reshape(2, 3)}, class_names=["a", "b", "c"])


def test_valid_model_folder_loads(tmp_path):
    cfg, state, meta = load_model_files(_model_folder(tmp_path))
    assert cfg.model.num_classes == 3 and state["w"].shape == (2, 3) and meta["class_names"] == ["a", "b", "c"]


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "huge-header", "pickle"])
def test_corrupt_safetensors_gives_checkpoint_error(tmp_path, damage):
    folder = _model_folder(tmp_path)
    weights = folder / "model.safetensors"
    good = weights.read_bytes()
    if damage == "garbage":
        weights.write_bytes(b"not a safetensors file at all" * 4)
    elif damage == "truncated":
        weights.write_bytes(good[: len(good) - 10])
    elif damage == "empty":
        weights.write_bytes(b"")
    elif damage == "huge-header":
        weights.write_bytes((2**62).to_bytes(8, "little") + good[8:])
    else:
        weights.write_bytes(pickle.dumps({"w": [1, 2, 3]}))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a valid safetensors file"):
        load_model_files(folder)


def test_model_config_with_python_tag_is_refused(tmp_path):
    folder = _model_folder(tmp_path)
    (folder / "config.yaml").write_text("model: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises((CheckpointError, ConfigError), match="config.yaml"):
        load_model_files(folder)


def test_pickled_code_in_a_training_state_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    path = tmp_path / "state.pt"
    torch.save({"optimizer": Payload()}, path)
    with pytest.raises(CheckpointError, match=r"state\.pt: refused to load"):
        safe_torch_load(path)
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match=r"junk\.pt"):
        safe_torch_load(tmp_path / "junk.pt")
