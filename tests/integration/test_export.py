"""ONNX export: onnxruntime (CPU) agrees with eager PyTorch at sizes other than the export size.

A small random-init model (ResNet-18, 1 encoder / 6 decoder layers: the decoder depth of the presets,
which an onnxscript rewrite once broke) is exported twice per run:
raw outputs through the ``hdetr export`` verb, and with in-graph post-processing (uint8 mask) through
``export_onnx``. Tolerance: |score difference| and |normalised box difference| <= 1e-4; the top
detections (query, label) must be identical. Everything runs through the unified API:
``hdetr.runtime.OnnxBackend`` (the session) and ``hdetr.api.Detector.from_onnx`` / ``hdetr predict
--backend onnxruntime`` against ``Detector.from_checkpoint`` / ``--backend torch``.
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
from hdetr.weights import save_model  # noqa: E402
from hdetr.cli import main as cli_main  # noqa: E402
from hdetr.config import build_config  # noqa: E402
from hdetr.export import export_onnx, read_metadata  # noqa: E402
from hdetr.models import build_model  # noqa: E402
from hdetr.postprocess import postprocess  # noqa: E402
from hdetr.api import Detector  # noqa: E402
from hdetr.errors import UserError  # noqa: E402
from hdetr.runtime import OnnxBackend  # noqa: E402

pytestmark = pytest.mark.slow

ATOL = 1e-4
TOP = 10  # detections whose (query, label) must be identical
CLASS_NAMES = ["person", "bicycle", "car", "dog", "cat", "chair", "cup"]
CAT_IDS = [1, 2, 3, 5, 8, 13, 21]  # dataset category ids of the classes: not the class indices

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
        "data": {"train_scales": [288, 320], "val_scale": 320, "max_size": 512},
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
def exported(module_dir):
    torch.manual_seed(0)
    cfg = small_config()
    model = build_model(cfg).eval()
    # Random init gives scores of ~0.03; spread the class heads (top scores ~0.2-0.55, none saturated).
    with torch.no_grad():
        for head in model.class_heads:
            head.weight.mul_(3.0)
    root = module_dir("export")
    cmap = {"mode": "contiguous", "cat_ids": CAT_IDS, "names": CLASS_NAMES}
    save_model(root / "model", cfg, model.state_dict(), class_names=CLASS_NAMES,
               extra_meta={"category_map": json.dumps(cmap)})
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


def pairs(d):
    return list(zip(d["query_index"].tolist(), d["labels"].tolist()))


@pytest.mark.parametrize("sizes", BATCHES, ids=["x".join(f"{h}x{w}" for h, w in s) for s in BATCHES])
def test_raw_outputs_match_eager(exported, sizes):
    model, backend = exported["model"], OnnxBackend(exported["raw"], threads=2)
    images, mask, orig = make_batch(sizes, seed=len(sizes))
    with torch.no_grad():
        ref = model(images, mask)
    got = backend.forward(images, mask)
    assert got["pred_logits"].shape == ref["pred_logits"].shape
    torch.testing.assert_close(got["pred_logits"].sigmoid(), ref["pred_logits"].sigmoid(), rtol=0, atol=ATOL)
    torch.testing.assert_close(got["pred_boxes"], ref["pred_boxes"], rtol=0, atol=ATOL)
    for a, b in zip(postprocess(got, orig, topk=20), postprocess(ref, orig, topk=20)):
        assert_same_top(pairs(a), pairs(b), b["scores"])


@pytest.mark.parametrize("sizes", BATCHES[1:3], ids=["b2", "b3"])
def test_postprocess_graph_matches_postprocess(exported, sizes):
    model, backend = exported["model"], OnnxBackend(exported["post"], threads=2)
    assert backend._mask_dtype is np.uint8
    images, mask, orig = make_batch(sizes, seed=7)
    scores, labels, boxes = backend.run_postprocessed(images, mask, orig)
    with torch.no_grad():
        ref = postprocess(model(images, mask), orig, topk=20)
    assert scores.shape == (len(sizes), 20) and boxes.shape == (len(sizes), 20, 4)
    assert labels.dtype == torch.int64
    for i, r in enumerate(ref):
        scale = orig[i].flip(0).repeat(2).float()  # (w, h, w, h)
        torch.testing.assert_close(scores[i], r["scores"], rtol=0, atol=ATOL)
        torch.testing.assert_close(boxes[i] / scale, r["boxes"] / scale, rtol=0, atol=ATOL)
        assert_same_top(labels[i].tolist(), r["labels"].tolist(), r["scores"])
    with pytest.raises(RuntimeError, match="no raw outputs"):
        backend.forward(images, mask)


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
    assert read_metadata(exported["raw"])["category_map"]["cat_ids"] == CAT_IDS  # from the model folder
    assert OnnxBackend(exported["post"]).metadata["class_names"] == CLASS_NAMES
    det = Detector.from_onnx(exported["raw"])
    assert det.class_names == CLASS_NAMES and det.cfg.model.backbone == "resnet18"
    assert det.cfg.to_dict() == exported["cfg"].to_dict()
    assert [det.category_id(i) for i in range(len(CAT_IDS))] == CAT_IDS


def test_from_onnx_refuses_postprocess_graph(exported):
    with pytest.raises(UserError, match="--postprocess"):
        Detector.from_onnx(exported["post"])


def random_images(sizes, seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in sizes]


def test_predict_backends_agree(exported):
    images = random_images(((480, 640), (300, 200), (250, 700)))
    eager = Detector.from_checkpoint(exported["root"] / "model")
    onnx_det = Detector.from_onnx(exported["raw"], threads=2)
    for batch in ([images[0]], images):  # one image, and a batch of three aspect ratios
        for a, b in zip(onnx_det.predict_batch(batch, threshold=0.0), eager.predict_batch(batch, threshold=0.0)):
            assert len(a) == len(b) == 20
            assert_same_top(a.labels.tolist(), b.labels.tolist(), b.scores)
            assert set(a.label_names) <= set(CLASS_NAMES)
            torch.testing.assert_close(a.scores, b.scores, rtol=0, atol=ATOL)
            torch.testing.assert_close(a.boxes, b.boxes, rtol=0, atol=0.05)  # pixels, ~1e-4 of the side
    single = onnx_det.predict(images[0], threshold=0.3)
    assert bool((single.scores >= 0.3).all())


def test_too_small_input_is_refused(exported):
    det = Detector.from_onnx(exported["raw"])
    with pytest.raises(ValueError, match="sides >= 65"):
        det._forward(torch.zeros(1, 3, 64, 200), torch.zeros(1, 64, 200, dtype=torch.bool))
    # val_scale 320 / max_size 512: a 20x2000 image is resized to 5x512.
    with pytest.raises(ValueError, match="sides >= 65"):
        det.predict(torch.zeros(3, 20, 2000, dtype=torch.uint8))


def test_predict_cli_backends_agree(exported, tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for k, im in enumerate(random_images(((480, 640), (300, 200), (350, 350)), seed=3)):
        im.save(folder / f"img{k}.png")
    model_dir, onnx_path = exported["root"] / "model", exported["raw"]
    runs = {
        "torch": ["predict", str(model_dir), str(folder), "--backend", "torch"],
        "onnxruntime": ["predict", str(onnx_path), str(folder), "--backend", "onnxruntime", "--threads", "2"],
        "auto": ["predict", str(onnx_path), str(folder)],  # .onnx suffix -> onnxruntime
    }
    found = {}
    for key, argv in runs.items():
        assert cli_main(argv + ["--threshold", "0.0", "--out", str(tmp_path / key)]) == 0
        found[key] = json.loads((tmp_path / key / "detections.json").read_text())
        drawings = sorted(p.name for p in (tmp_path / key).glob("*.png"))
        assert drawings == ["img0.png", "img1.png", "img2.png"]
        with Image.open(tmp_path / key / "img1.png") as im:
            assert im.size == (200, 300)  # drawn at the input's size (--draw-min-side enlarges)
    assert found["auto"] == found["onnxruntime"]
    ref, got = found["torch"], found["onnxruntime"]
    assert len(got) == len(ref) == 3 * 20
    assert {d["category_id"] for d in got} <= set(CAT_IDS)
    for image_id in (1, 2, 3):
        a = [d for d in got if d["image_id"] == image_id]
        b = [d for d in ref if d["image_id"] == image_id]
        assert [d["file_name"] for d in a] == [d["file_name"] for d in b]
        assert_same_top([d["category_id"] for d in a], [d["category_id"] for d in b],
                        torch.tensor([d["score"] for d in b]))
        assert_same_top([d["category_name"] for d in a], [d["category_name"] for d in b],
                        torch.tensor([d["score"] for d in b]))
        torch.testing.assert_close(torch.tensor([d["score"] for d in a]), torch.tensor([d["score"] for d in b]),
                                   rtol=0, atol=ATOL)
        torch.testing.assert_close(torch.tensor([d["bbox"] for d in a]), torch.tensor([d["bbox"] for d in b]),
                                   rtol=0, atol=0.05)
    capsys.readouterr()
    assert cli_main(["predict", str(exported["post"]), str(folder), "--out", str(tmp_path / "x")]) == 2
    assert "--postprocess" in capsys.readouterr().err
    assert cli_main(["predict", str(onnx_path), str(folder), "--backend", "torch", "--out", str(tmp_path / "x")]) == 2
    assert "--backend onnxruntime" in capsys.readouterr().err
    assert cli_main(["predict", str(model_dir), str(folder), "--backend", "onnxruntime",
                     "--out", str(tmp_path / "x")]) == 2
    assert ".onnx" in capsys.readouterr().err


def test_export_cli_errors(exported, tmp_path, capsys):
    assert cli_main(["export", str(tmp_path / "missing"), str(tmp_path / "x.onnx")]) == 2
    assert "no such model folder" in capsys.readouterr().err
    assert cli_main(["export", str(exported["root"] / "model"), str(tmp_path / "x.onnx"), "--opset", "13"]) == 2
    assert "opset 13" in capsys.readouterr().err
    assert cli_main(["export", str(exported["root"] / "model"), str(tmp_path / "x.txt")]) == 2


def test_efficientnet_lite0_backbone_exports_with_parity(tmp_path):
    """The EfficientNet-Lite0 backbone (TF "SAME" padding, computed from the input size) in the graph:
    onnxruntime agrees with eager PyTorch at sizes other than the export example, odd ones included.
    Random weights (model.backbone_weights left empty): nothing is downloaded."""
    pytest.importorskip("timm")
    torch.manual_seed(0)
    cfg = build_config({
        "model": {"backbone": "efficientnet_lite0", "hidden_dim": 64, "nheads": 4, "enc_layers": 1, "dec_layers": 2,
                  "dim_feedforward": 64, "num_queries": 20, "num_classes": len(CLASS_NAMES), "topk": 20},
        "hybrid": {"scheme": "branch", "num_queries_one2many": 20},
        "data": {"train_scales": [128, 160], "val_scale": 160, "max_size": 256},
    })
    model = build_model(cfg).eval()
    with torch.no_grad():  # spread the scores, as for the default backbone above
        for head in model.class_heads:
            head.weight.mul_(3.0)
    path = tmp_path / "effnet.onnx"
    export_onnx(model, path, config=cfg, class_names=CLASS_NAMES, verify=False)
    backend = OnnxBackend(path, threads=2)
    for seed, sizes in enumerate([[(160, 224)], [(131, 97), (160, 203)]]):
        images, mask, orig = make_batch(sizes, seed=seed)
        with torch.no_grad():
            ref = model(images, mask)
        got = backend.forward(images, mask)
        torch.testing.assert_close(got["pred_logits"].sigmoid(), ref["pred_logits"].sigmoid(), rtol=0, atol=ATOL)
        torch.testing.assert_close(got["pred_boxes"], ref["pred_boxes"], rtol=0, atol=ATOL)
        for a, b in zip(postprocess(got, orig, topk=20), postprocess(ref, orig, topk=20)):
            assert_same_top(pairs(a), pairs(b), b["scores"])


def test_fp16_graph_runs_with_float32_io_and_stays_near_fp32(exported, tmp_path):
    """hdetr export --fp16's conversion step on the exported graph: float32 inputs and outputs, float16
    weights (smaller file), metadata kept with precision fp16, and the detections of the fp32 graph."""
    import onnx

    from hdetr.export import FP16_ATOL, convert_to_fp16, verify_onnx

    half = tmp_path / "half.onnx"
    convert_to_fp16(exported["raw"], half)
    meta = read_metadata(half)
    assert meta["class_names"] == CLASS_NAMES and meta["config"] is not None
    assert {p.key: p.value for p in onnx.load(str(half)).metadata_props}["precision"] == "fp16"
    assert half.stat().st_size < 0.7 * exported["raw"].stat().st_size
    weights = {i.data_type for i in onnx.load(str(half)).graph.initializer}
    assert onnx.TensorProto.FLOAT16 in weights
    backend = OnnxBackend(half)
    assert [i.type for i in backend.session.get_inputs()] == ["tensor(float)", "tensor(bool)"]
    v = verify_onnx(half, exported["model"], fp16=True)
    assert v["ok"], v
    assert v["finite"] and v["max_abs_score_diff"] > 0  # really float16 arithmetic, not the float32 graph
    full, halved = Detector.from_onnx(exported["raw"]), Detector.from_onnx(half)
    image = (torch.rand(3, 300, 400) * 255).to(torch.uint8)
    a, b = full.predict(image, threshold=0.0), halved.predict(image, threshold=0.0)
    assert (a.scores - b.scores).abs().max() < FP16_ATOL


def test_threshold_best_on_a_graph_carrying_the_model_folders_threshold(exported, tmp_path):
    import onnx

    plain = Detector.from_onnx(exported["raw"])  # its model folder had no threshold.json
    with pytest.raises(UserError, match=r"raw\.onnx has no stored best threshold"):
        plain.predict((torch.rand(3, 200, 200) * 255).to(torch.uint8), threshold="best")
    model = onnx.load(str(exported["raw"]))
    model.metadata_props.add(key="best_threshold", value="0.37")  # what export_checkpoint writes
    tagged = tmp_path / "tagged.onnx"
    onnx.save(model, str(tagged))
    det = Detector.from_onnx(tagged)
    image = (torch.rand(3, 200, 200) * 255).to(torch.uint8)
    assert det.best_threshold == 0.37
    best, fixed = det.predict(image, threshold="best"), det.predict(image, threshold=0.37)
    assert torch.equal(best.scores, fixed.scores) and (best.scores >= 0.37).all()
