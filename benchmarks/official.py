"""Run the official H-Deformable-DETR code from a checkout the user provides (``--official PATH``).

Nothing of it is vendored: its model, criterion and hybrid loss are imported from PATH at run time.
Only what a plain CPU environment lacks is substituted, in this process and without touching its
files:

* optional imports that are not installed (wandb, mmcv, mmdet: logging and Swin checkpoint loading)
  and the compiled ``MultiScaleDeformableAttention`` extension are served as inert stub modules;
* where the compiled deformable-attention op is missing (always on the CPU), its autograd Function is
  replaced by ``ms_deform_attn_core_pytorch``, the pure-PyTorch version in the same repository;
* ``is_main_process`` is made false while the model is built, so torchvision does not download
  ImageNet weights; the ResNet-50 body is then replaced by the precomputed feature maps.

The detection arguments come from the checkout itself: ``get_args_parser`` is read out of its
``main.py`` (``main.py`` as a whole imports the dataset code) and the R50 flags from its config
scripts; ``train_hybrid`` (the one-to-many loss) likewise from ``engine.py``.
"""

from __future__ import annotations

import ast
import importlib.abc
import importlib.machinery
import importlib.util
import shlex
import sys
import types
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

CONFIGS = {  # the official R50 scripts (12 epochs) of the two models hdetr's presets reproduce
    "hybrid": "configs/two_stage/deformable-detr-hybrid-branch/12eps/"
              "r50_hybrid_branch_lambda1_group6_t1500_dp0_mqs_lft_deformable_detr_plus_iterative_bbox_refinement_plus_plus_two_stage.sh",
    "baseline": "configs/two_stage/deformable-detr-baseline/12eps/"
                "r50_dp0_mqs_lft_deformable_detr_plus_iterative_bbox_refinement_plus_plus_two_stage.sh",
}
OPTIONAL_MODULES = ("wandb", "mmcv", "mmdet", "MultiScaleDeformableAttention")


class OfficialCodeError(RuntimeError):
    pass


# -- stubs for modules that are not installed -------------------------------------------------------
class _StubModule(types.ModuleType):
    """Any attribute is a fresh class: importable, callable, subclassable, usable as a decorator."""

    __path__: list = []  # a package, so that submodules (mmcv.runner, ...) import too

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        stub = type(name, (), {"__init__": lambda self, *a, **k: None, "__call__": lambda self, *a, **k: None})
        setattr(self, name, stub)
        return stub


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Last on ``sys.meta_path``: only consulted when no installed module of that name exists."""

    def __init__(self, roots: set[str]):
        self.roots = roots

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.roots:
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        return _StubModule(spec.name)

    def exec_module(self, module):
        pass


def _missing(names) -> set[str]:
    return {n for n in names if importlib.util.find_spec(n) is None}


def _read_functions(path: Path, names: list[str], namespace: dict) -> dict:
    """Execute only the top-level functions ``names`` of a source file, in ``namespace``, after the
    file's imports of installed (not its own) modules that are available."""
    tree = ast.parse(path.read_text(), str(path))
    own = {p.name.removesuffix(".py") for p in path.parent.iterdir()}
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            top = (node.module if isinstance(node, ast.ImportFrom) else node.names[0].name) or ""
            if top.split(".")[0] in own or getattr(node, "level", 0):
                continue
            try:
                exec(compile(ast.Module(body=[node], type_ignores=[]), str(path), "exec"), namespace)
            except ImportError:
                pass
    found = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name in names]
    missing = set(names) - {f.name for f in found}
    if missing:
        raise OfficialCodeError(f"{path}: no function {', '.join(sorted(missing))} (is this the official repository?)")
    exec(compile(ast.Module(body=found, type_ignores=[]), str(path), "exec"), namespace)
    return {n: namespace[n] for n in names}


def config_flags(root: Path, model: str) -> list[str]:
    """The command-line flags of an official config script (without --output_dir)."""
    script = root / CONFIGS[model]
    if not script.is_file():
        raise OfficialCodeError(f"{script}: missing (is {root} a checkout of HDETR/H-Deformable-DETR?)")
    text = script.read_text().replace("\\\n", " ")
    line = next((l for l in text.splitlines() if "main.py" in l), None)
    if line is None:
        raise OfficialCodeError(f"{script}: no 'main.py' command line")
    words = shlex.split(line.split("main.py", 1)[1])
    flags, skip = [], False
    for w in words:
        if skip:
            skip = False
        elif w == "--output_dir":
            skip = True
        elif w.strip() and not w.startswith("$"):
            flags.append(w)
    return flags


@dataclass
class OfficialCode:
    root: Path
    get_args_parser: object
    train_hybrid: object
    build: object
    nested_tensor: type
    attention: str  # which deformable-attention implementation it runs
    stubbed: list[str] = field(default_factory=list)

    def args(self, model: str, device: str = "cpu"):
        return self.get_args_parser().parse_args(config_flags(self.root, model) + ["--device", device])


def load_official(root: str | Path, device: str = "cpu") -> OfficialCode:
    root = Path(root).resolve()
    for rel in ("main.py", "engine.py", "models/deformable_detr.py", "models/ops/functions/ms_deform_attn_func.py"):
        if not (root / rel).is_file():
            raise OfficialCodeError(f"{root}: no {rel}; pass a checkout of github.com/HDETR/H-Deformable-DETR")
    stubbed = sorted(_missing(OPTIONAL_MODULES))
    if stubbed and not any(isinstance(f, _StubFinder) for f in sys.meta_path):
        sys.meta_path.append(_StubFinder(set(stubbed)))
    # Its top-level packages are called `models`, `util`, `datasets`: they must come from PATH.
    for name in [m for m in sys.modules if m.split(".")[0] in ("models", "util", "datasets")]:
        if not str(getattr(sys.modules[name], "__file__", "") or "").startswith(str(root)):
            raise OfficialCodeError(f"a module {name!r} from elsewhere is already imported; run in a fresh process")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))

    ddetr = importlib.import_module("models.deformable_detr")
    attn_module = importlib.import_module("models.ops.modules.ms_deform_attn")
    func = importlib.import_module("models.ops.functions.ms_deform_attn_func")
    compiled = "MultiScaleDeformableAttention" not in stubbed
    if compiled and device.startswith("cuda"):
        attention = "compiled CUDA op (MultiScaleDeformableAttention)"
    else:
        core = func.ms_deform_attn_core_pytorch

        class PyTorchMSDeformAttn:
            """Same call as the compiled Function; the official pure-PyTorch computation."""

            @staticmethod
            def apply(value, shapes, level_start_index, sampling_locations, attention_weights, im2col_step):
                return core(value, shapes, sampling_locations, attention_weights)

        attn_module.MSDeformAttnFunction = PyTorchMSDeformAttn
        attention = "ms_deform_attn_core_pytorch (pure PyTorch, from the same repository)"
    misc = importlib.import_module("util.misc")
    parser = _read_functions(root / "main.py", ["get_args_parser"], {"__name__": "official_main"})
    engine = _read_functions(root / "engine.py", ["train_hybrid"], {"__name__": "official_engine"})
    return OfficialCode(root=root, get_args_parser=parser["get_args_parser"], train_hybrid=engine["train_hybrid"],
                        build=ddetr.build, nested_tensor=misc.NestedTensor, attention=attention, stubbed=stubbed)


class FeatureBody(nn.Module):
    """Stands in for the ResNet-50 body: returns the given stride-8/16/32 maps, as IntermediateLayerGetter does."""

    def __init__(self, features):
        super().__init__()
        self.maps = features

    def forward(self, images):
        return OrderedDict((str(i), f) for i, f in enumerate(self.maps))


def build_official(code: OfficialCode, model: str, features, device: str = "cpu"):
    """The official model (ResNet-50 body replaced by ``features``), criterion and its args."""
    args = code.args(model, device)
    backbone_module = sys.modules["models.backbone"]
    main_process = backbone_module.is_main_process
    backbone_module.is_main_process = lambda: False  # no ImageNet download
    try:
        torch.manual_seed(0)
        net, criterion, _ = code.build(args)
    finally:
        backbone_module.is_main_process = main_process
    net.backbone[0].body = FeatureBody(features)
    return net.to(device), criterion, args


class RecordingMatcher(nn.Module):
    """Wraps the official matcher and keeps every assignment it returns."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.calls: list = []

    def forward(self, outputs, targets):
        indices = self.inner(outputs, targets)
        self.calls.append([(s.tolist(), t.tolist()) for s, t in indices])
        return indices


def official_train_losses(code: OfficialCode, net, criterion, args, samples, targets):
    """Loss dict and weighted total of one official training forward, as its train_one_epoch does."""
    outputs = net(samples)
    if args.k_one2many > 0:
        loss_dict = code.train_hybrid(outputs, targets, args.k_one2many, criterion, args.lambda_one2many)
    else:
        loss_dict = criterion(outputs, targets)
    weights = criterion.weight_dict
    total = sum(loss_dict[k] * weights[k] for k in loss_dict if k in weights)
    return loss_dict, total
