"""ONNX export: onnxruntime (CPU) agrees with eager PyTorch at sizes other than the export size.

A small random-init model (ResNet-18, 1 encoder / 6 decoder layers: the decoder depth of the presets,
which an onnxscript rewrite once broke) is exported twice per run:
raw outputs through the ``hdetr export`` verb, and with in-graph post-processing (uint8 mask) through
``export_onnx``. Tolerance: |score difference| and |normalised box difference| <= 1e-4; the top
detections (query, label) must be identical.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")

from hdetr import __version__  # noqa: E402
from hdetr.checkpoint import save_model  # noqa: E402
from hdetr.cli import main as cli_main  # noqa: E402
from hdetr.config import build_config  # noqa: E402
from hdetr.export import export_onnx, read_metadata  # noqa: E402
from hdetr.models import build_model  # noqa: E402
from hdetr.postprocess import postprocess  # noqa: E402
from hdetr.runtime import OnnxDetector, TorchDetector  # noqa: E402

ATOL = 1e-4
TOP = 10  # detections whose (query, label) must be identical
CLASS_NAMES = ["person", "bicycle", "car", "dog", "cat", "chair", "cup"]

# Batches of images of their own sizes (h, w), padded to the largest; none equals the export example.
BATCHES = [
    [(320, 480)],
    [(400, 300), (256, 352)],
    [(256, 704), (320, 320), (180, 500)],
    [(544, 384)],
]


def small_config():
    return build_config({
        "model": {"backbone": "resnet18", "enc_layers": 1, "dec_layers": 6, "dim_feedforward": 64,
                  "num_queries": 30, "num_classes": len(CLASS_NAMES), "topk": 20},
        "hybrid": {"scheme": "branch", "num_queries_one2many": 20},
        "data": {"val_scale": 320, "max_size": 512},
    })


def assert_same_top(ours: list, theirs: list, scores: torch.Tensor, top: int = TOP) -> None:
    """The first ``top`` detections are identical; only runs of scores within 2 x ATOL may swap order."""
    i = 0
    while i < top:
        j = i + 1
        while j < len(theirs) and float(scores[j - 1] - scores[j]) < 2 * ATOL:
            j += 1
        assert sorted(ours[i:j]) == sorted(theirs[i:j]), f"detections {i}..{j - 1} differ: {ours[:top]} vs {theirs[:top]}"
        i = j


def make_batch(sizes, seed):
    g = torch.Generator().manual_seed(seed)
    bh, bw = max(h for h, _ in sizes), max(w for _, w in sizes)
    images = torch.zeros(len(sizes), 3, bh, bw)
    mask = torch.ones(len(sizes), bh, bw, dtype=torch.bool)
    for i, (h, w) in enumerate(sizes):
        images[i, :, :h, :w] = torch.randn(3, h, w, generator=g)
        mask[i, :h, :w] = False
    orig = torch.tensor([[2 * h + 1, 2 * w - 3] for h, w in sizes], dtype=torch.int64)
    return images, mask, orig


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.set_num_threads(2)
    torch.manual_seed(0)
    cfg = small_config()
    model = build_model(cfg).eval()
    # Random init gives scores of ~0.03; spread the class heads (top scores ~0.2-0.55, none saturated).
    with torch.no_grad():
        for head in model.class_heads:
            head.weight.mul_(3.0)
    root = tmp_path_factory.mktemp("export")
    save_model(root / "model", cfg, model.state_dict(), class_names=CLASS_NAMES)
    raw = root / "raw.onnx"
    assert cli_main(["export", str(root / "model"), "--format", "onnx", str(raw)]) == 0
    post = root / "post.onnx"
    export_onnx(model, post, config=cfg, class_names=CLASS_NAMES, postprocess=True, mask_dtype="uint8", verify=False)
    return {"cfg": cfg, "model": model, "raw": raw, "post": post, "root": root}


def test_graph_axes_are_dynamic(exported):
    import onnx

    m = onnx.load(str(exported["raw"]), load_external_data=False)
    onnx.checker.check_model(m)
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in m.graph.input}
    assert dims == {"images": ["batch", 3, "height", "width"], "mask": ["batch", "height", "width"]}
    outs = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in m.graph.output}
    assert outs == {"pred_logits": ["batch", 30, len(CLASS_NAMES)], "pred_boxes": ["batch", 30, 4]}


@pytest.mark.parametrize("sizes", BATCHES, ids=["x".join(f"{h}x{w}" for h, w in s) for s in BATCHES])
def test_raw_outputs_match_eager(exported, sizes):
    model, onnx_det = exported["model"], OnnxDetector(exported["raw"], threads=2)
    images, mask, orig = make_batch(sizes, seed=len(sizes))
    with torch.no_grad():
        ref = model(images, mask)
    got = onnx_det.forward(images, mask)
    assert got["pred_logits"].shape == ref["pred_logits"].shape
    torch.testing.assert_close(got["pred_logits"].sigmoid(), ref["pred_logits"].sigmoid(), rtol=0, atol=ATOL)
    torch.testing.assert_close(got["pred_boxes"], ref["pred_boxes"], rtol=0, atol=ATOL)
    ours = onnx_det.detect(images, mask, orig)
    theirs = postprocess(ref, orig, topk=20)
    for a, b in zip(ours, theirs):
        pairs = lambda d: list(zip(d["query_index"].tolist(), d["labels"].tolist()))  # noqa: E731
        assert_same_top(pairs(a), pairs(b), b["scores"])


@pytest.mark.parametrize("sizes", BATCHES[1:3], ids=["b2", "b3"])
def test_postprocess_graph_matches_postprocess(exported, sizes):
    model = exported["model"]
    session = ort.InferenceSession(str(exported["post"]), providers=["CPUExecutionProvider"])
    images, mask, orig = make_batch(sizes, seed=7)
    scores, labels, boxes = session.run(None, {"images": images.numpy(), "mask": mask.numpy().astype(np.uint8),
                                               "orig_sizes": orig.numpy()})
    with torch.no_grad():
        ref = postprocess(model(images, mask), orig, topk=20)
    assert scores.shape == (len(sizes), 20) and boxes.shape == (len(sizes), 20, 4)
    assert labels.dtype == np.int64
    for i, r in enumerate(ref):
        scale = orig[i].flip(0).repeat(2).float()  # (w, h, w, h)
        torch.testing.assert_close(torch.from_numpy(scores[i]), r["scores"], rtol=0, atol=ATOL)
        torch.testing.assert_close(torch.from_numpy(boxes[i]) / scale, r["boxes"] / scale, rtol=0, atol=ATOL)
        assert_same_top(labels[i].tolist(), r["labels"].tolist(), r["scores"])


def test_metadata_round_trip(exported):
    for key in ("raw", "post"):
        meta = read_metadata(exported[key])
        assert meta["class_names"] == CLASS_NAMES
        assert meta["hdetr_version"] == __version__
        assert meta["config"] == json.loads(json.dumps(exported["cfg"].to_dict()))
        assert meta["topk"] == 20
    assert read_metadata(exported["raw"])["outputs"] == "raw"
    assert read_metadata(exported["raw"])["onnxscript_optimized"]
    assert read_metadata(exported["post"])["outputs"] == "postprocessed"
    det = OnnxDetector(exported["post"])
    assert det.class_names == CLASS_NAMES and det.config.model.backbone == "resnet18"


def test_predict_backends_agree(exported):
    from PIL import Image

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in ((480, 640), (300, 200))]
    eager = TorchDetector.from_checkpoint(exported["root"] / "model")
    for path in (exported["raw"], exported["post"]):
        onnx_det = OnnxDetector(path, threads=2)
        for a, b in zip(onnx_det.predict(images), eager.predict(images)):
            assert_same_top(a["labels"].tolist(), b["labels"].tolist(), b["scores"])
            assert set(a["names"]) <= set(CLASS_NAMES)
            torch.testing.assert_close(a["scores"], b["scores"], rtol=0, atol=ATOL)
            torch.testing.assert_close(a["boxes"], b["boxes"], rtol=0, atol=0.05)  # pixels, ~1e-4 of the side
    single = OnnxDetector(exported["raw"]).predict(images[0], threshold=0.5)
    assert isinstance(single, dict) and bool((single["scores"] >= 0.5).all())


def test_too_small_input_is_refused(exported):
    det = OnnxDetector(exported["raw"])
    with pytest.raises(ValueError, match="sides >= 65"):
        det.forward(torch.zeros(1, 3, 64, 200), torch.zeros(1, 64, 200, dtype=torch.bool))


def test_export_cli_errors(exported, tmp_path, capsys):
    assert cli_main(["export", str(tmp_path / "missing"), str(tmp_path / "x.onnx")]) == 2
    assert "no such model folder" in capsys.readouterr().err
    assert cli_main(["export", str(exported["root"] / "model"), str(tmp_path / "x.onnx"), "--opset", "13"]) == 2
    assert "opset 13" in capsys.readouterr().err
    assert cli_main(["export", str(exported["root"] / "model"), str(tmp_path / "x.txt")]) == 2
