"""hdetr predict beyond single images: batches of mixed sizes, videos, ground truth, empty results."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from hdetr.api import Detector, as_uint8_image
from hdetr.cli import main
from hdetr.config import load_config
from hdetr.engine.train import train
from support.engine_helpers import assert_keeps_foreign_files, tiny_overrides


@pytest.fixture(scope="module")
def model_dir(synth_data, module_dir):
    out = module_dir("predict_run")
    train(load_config(None, tiny_overrides(synth_data, "train.max_iters=2", "train.epochs=1")), out, progress=False)
    return out / "model"


@pytest.fixture(scope="module")
def mixed_sizes(synth_data, module_dir):
    """Validation images resized to four different shapes: a batch of them needs padding."""
    folder = module_dir("mixed")
    for i, (path, size) in enumerate(zip(sorted((synth_data / "valid").glob("*.jpg")),
                                         [(64, 64), (96, 48), (40, 72), (80, 80)])):
        with Image.open(path) as im:
            im.convert("RGB").resize(size).save(folder / f"img{i}.png")
    return folder


@pytest.mark.slow
def test_batched_prediction_equals_one_by_one(model_dir, mixed_sizes, tmp_path):
    outs = {}
    for bs in (1, 3):
        assert main(["predict", str(model_dir), str(mixed_sizes), "--threshold", "0", "--batch-size", str(bs),
                     "--out", str(tmp_path / f"bs{bs}")]) == 0
        outs[bs] = json.loads((tmp_path / f"bs{bs}" / "detections.json").read_text())
    assert len(outs[1]) == len(outs[3]) == 4 * 20
    for a, b in zip(outs[1], outs[3]):
        assert (a["file_name"], a["category_id"]) == (b["file_name"], b["category_id"])
        assert a["score"] == pytest.approx(b["score"], abs=1e-4)
        assert a["bbox"] == pytest.approx(b["bbox"], abs=1e-2)


def test_a_batch_of_mixed_sizes_is_split_by_input_size(model_dir, mixed_sizes):
    """Why the batch is split: padding changes the tiny backbone's GroupNorm statistics, so padded
    outputs would differ from one-by-one ones (this check can fail, unlike a tolerance of anything)."""
    from hdetr.data.collate import pad_images

    det = Detector.from_checkpoint(model_dir)
    images = sorted(mixed_sizes.glob("*.png")) + [sorted(mixed_sizes.glob("*.png"))[0]]
    calls = []
    original = det._forward
    det._forward = lambda x, mask: calls.append(tuple(x.shape)) or original(x, mask)
    det.predict_batch(images, threshold=0.0)
    assert sorted(c[0] for c in calls) == [1, 1, 3]  # 64 x 64, 80 x 80 and the repeat all run at 64 x 64
    raw = [det.preprocess(as_uint8_image(p)) for p in images[:2]]  # 64 x 64 and 96 x 48: padding needed
    padded = original(*pad_images(raw))
    alone = original(raw[1][None], torch.zeros(1, *raw[1].shape[-2:], dtype=torch.bool))
    assert not torch.allclose(padded["pred_logits"][1], alone["pred_logits"][0], atol=1e-3)


def test_imgsz_changes_the_network_input(model_dir, synth_data):
    det = Detector.from_checkpoint(model_dir)
    shapes = []
    original = det._forward
    det._forward = lambda images, mask: shapes.append(tuple(images.shape[-2:])) or original(images, mask)
    image = sorted((synth_data / "valid").glob("*.jpg"))[0]
    det.predict(image)
    det.predict(image, imgsz=96)
    assert shapes == [(64, 64), (96, 96)]  # data.val_scale=64 in the tiny config


def test_nothing_above_threshold_is_explained(model_dir, synth_data, tmp_path, capsys):
    image = sorted((synth_data / "valid").glob("*.jpg"))[0]
    assert main(["predict", str(model_dir), str(image), "--threshold", "1.0", "--out", str(tmp_path / "p")]) == 0
    line = [l for l in capsys.readouterr().out.splitlines() if str(image) in l][0]
    assert "nothing scored >= 1.0" in line and "highest scores:" in line
    best = Detector.from_checkpoint(model_dir).predict(image, threshold=0.0)
    assert f"{best.label_names[0]} {float(best.scores[0]):.3f}" in line  # the top score, named


def test_show_gt_draws_ground_truth_beside(model_dir, synth_data, tmp_path, capsys):
    image = sorted((synth_data / "valid").glob("*.jpg"))[0]
    ann = synth_data / "valid" / "_annotations.coco.json"
    assert main(["predict", str(model_dir), str(image), "--threshold", "1.0", "--out", str(tmp_path / "plain")]) == 0
    assert main(["predict", str(model_dir), str(image), "--threshold", "1.0", "--show-gt", str(ann),
                 "--out", str(tmp_path / "gt")]) == 0
    with Image.open(tmp_path / "plain" / image.name) as plain, Image.open(tmp_path / "gt" / image.name) as both:
        assert both.width > 2 * plain.width - 1 and both.height >= plain.height
        right = both.crop((both.width - plain.width, 0, both.width, plain.height)).convert("RGB")
        px = torch.tensor(list(right.tobytes())).reshape(-1, 3)
        green = int(((px[:, 1] > 150) & (px[:, 0] < 80) & (px[:, 2] < 80)).sum())
    assert green > 100  # the ground-truth boxes, drawn in green on the right-hand copy
    assert main(["predict", str(model_dir), str(image), "--show-gt", str(tmp_path / "nope.json"),
                 "--out", str(tmp_path / "x")]) == 2
    assert "nope.json" in capsys.readouterr().err


def test_bad_options_exit_2(model_dir, synth_data, tmp_path, capsys):
    image = str(sorted((synth_data / "valid").glob("*.jpg"))[0])
    for opts, word in ((["--batch-size", "0"], "--batch-size"), (["--tile", "4"], "--tile"),
                       (["--tile", "64", "--overlap", "1.5"], "--overlap"), (["--imgsz", "3"], "--imgsz")):
        assert main(["predict", str(model_dir), image, *opts, "--out", str(tmp_path / "o")]) == 2
        assert word in capsys.readouterr().err
    # The drawings would land on the inputs.
    assert main(["predict", str(model_dir), str(synth_data / "valid"), "--out", str(synth_data / "valid")]) == 2


def test_out_keeps_files_hdetr_did_not_write(model_dir, synth_data, tmp_path, capsys):
    image = sorted((synth_data / "valid").glob("*.jpg"))[0]
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    command = ["predict", str(model_dir), str(image), "--out", str(out), "--no-progress"]
    # A file named like an output (the drawing of an input, detections.json): refused, named, kept.
    assert_keeps_foreign_files(command, out, ((image.name, b"the user's picture"), ("detections.json", b'{"mine": 1}')),
                               capsys)
    # A folder hdetr wrote into: the next run replaces its own files; the user's stay.
    assert main(command) == 0
    assert main(command) == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / image.name).exists()


def test_video_outputs_keep_files_hdetr_did_not_write(model_dir, tmp_path, capsys):
    pytest.importorskip("av")
    clip = tmp_path / "clip.mp4"
    write_clip(clip, frames=2)
    out = tmp_path / "out"
    out.mkdir()
    assert_keeps_foreign_files(["predict", str(model_dir), str(clip), "--out", str(out), "--no-progress"], out,
                               (("clip.jsonl", b"my notes\n"), ("clip.mp4", b"my video")), capsys)


def write_clip(path, frames=6, size=(64, 48), rate=5):
    av = pytest.importorskip("av")
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=rate)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for i in range(frames):
            pixels = torch.zeros(size[1], size[0], 3, dtype=torch.uint8)
            pixels[10:26, 4 + 6 * i: 20 + 6 * i] = torch.tensor([230, 40, 40], dtype=torch.uint8)  # a moving square
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels.numpy(), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def test_video_gives_annotated_video_and_json_lines(model_dir, tmp_path, capsys):
    av = pytest.importorskip("av")
    clip = tmp_path / "clip.mp4"
    write_clip(clip)
    out = tmp_path / "video_out"
    assert main(["predict", str(model_dir), str(clip), "--threshold", "0", "--batch-size", "4", "--out", str(out),
                 "--no-progress"]) == 0
    lines = [json.loads(l) for l in (out / "clip.jsonl").read_text().splitlines()]
    assert [l["frame"] for l in lines] == list(range(6))
    assert lines[1]["time"] == pytest.approx(0.2)
    assert all(len(l["detections"]) == 20 for l in lines)
    assert set(lines[0]["detections"][0]) == {"category_id", "category_name", "bbox", "score"}
    with av.open(str(out / "clip.mp4")) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == 6 and decoded[0].shape[:2] == (48, 64)  # the frames' size
    printed = capsys.readouterr().out
    assert "clip.mp4: 6 frames in" in printed and "frames/s" in printed
    # The detections of a frame are those of the same picture given as an image.
    det = Detector.from_checkpoint(model_dir)
    with av.open(str(clip)) as container:
        first = next(container.decode(video=0)).to_ndarray(format="rgb24")
    expected = det.predict(torch.from_numpy(first).permute(2, 0, 1), threshold=0.0)
    assert [d["score"] for d in lines[0]["detections"]] == pytest.approx(expected.scores.tolist(), abs=1e-5)


def test_video_errors_are_one_line(model_dir, tmp_path, capsys):
    pytest.importorskip("av")
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all")
    assert main(["predict", str(model_dir), str(broken), "--out", str(tmp_path / "o")]) == 2
    assert "broken.mp4" in capsys.readouterr().err
    assert main(["predict", str(model_dir), str(tmp_path / "missing.mp4"), "--out", str(tmp_path / "o")]) == 2
    assert "no such video file" in capsys.readouterr().err
