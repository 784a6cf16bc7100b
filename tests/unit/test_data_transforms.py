import pytest
import torch
from PIL import Image, ImageDraw
from torchvision import tv_tensors

from hdetr.config import FLIPS
from hdetr.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_transforms,
    resized_hw,
    rotate90,
)

# Two boxes of unique colours on black; one near a corner so crops often cut or remove it.
COLOURS = {1: (255, 0, 0), 2: (0, 255, 0)}
BOXES = {1: (14, 10, 70, 52), 2: (118, 84, 150, 112)}  # xyxy, x1/y1 exclusive
CROP = ((100, 120), 60, 100)


def _scene():
    img = Image.new("RGB", (160, 120), (0, 0, 0))
    draw = ImageDraw.Draw(img)
    for label, (x0, y0, x1, y1) in BOXES.items():
        # PIL's rectangle includes the end point, so x1-1/y1-1 makes the box tight.
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=COLOURS[label])
    target = {
        "boxes": torch.tensor([BOXES[1], BOXES[2]], dtype=torch.float32),
        "labels": torch.tensor([1, 2]),
    }
    return img, target


def _denormalise(x):
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return x * std + mean


def _region(rgb, colour):
    ch = [c > 0 for c in colour].index(True)
    others = [i for i in range(3) if i != ch]
    m = (rgb[ch] > 0.5) & (rgb[others[0]] < 0.5) & (rgb[others[1]] < 0.5)
    return m


@pytest.mark.parametrize("flips,jitter", [(f, 0.0) for f in FLIPS] + [("all", 0.3)])
@pytest.mark.parametrize("seed", range(16))
def test_train_boxes_follow_pixels(seed, flips, jitter):
    img, target = _scene()
    t = build_transforms(True, scales=range(112, 161, 16), max_size=266, crop=CROP, flips=flips, color_jitter=jitter)
    torch.manual_seed(seed)
    x, out = t(img, target)
    assert x.dtype == torch.float32 and x.shape[0] == 3
    h, w = x.shape[-2:]
    assert out["size"].tolist() == [h, w]
    assert out["boxes"].shape == (len(out["labels"]), 4)
    rgb = _denormalise(x)
    scale = torch.tensor([w, h, w, h])
    for label in (1, 2):
        region = _region(rgb, COLOURS[label])
        present = (out["labels"] == label).nonzero().flatten()
        if len(present) == 0:
            # Removed box: at most a sliver of its colour may survive the crop.
            assert region.sum() <= max(h, w) * 1, (seed, label)
            continue
        cx, cy, bw, bh = (out["boxes"][present[0]] * scale).tolist()
        box = [cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2]
        ys, xs = region.nonzero(as_tuple=True)
        assert len(xs) > 0, (seed, label)
        tight = [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]
        for b, r in zip(box, tight):
            assert abs(b - r) <= 1.5, (seed, label, box, tight)


def test_train_pipeline_flips_crops_and_varies_size():
    img, target = _scene()
    t = build_transforms(True, scales=range(112, 161, 16), max_size=266, crop=CROP)
    flipped, removed, sizes = 0, 0, set()
    for seed in range(16):
        torch.manual_seed(seed)
        x, out = t(img, target)
        sizes.add(tuple(x.shape[-2:]))
        removed += len(out["labels"]) < 2
        keep = out["labels"] == 1
        if keep.any() and out["boxes"][keep][0, 0] > 0.5:
            flipped += 1
    # Guards the property test above: flips, crops that drop boxes and rescaling all occur.
    assert flipped > 0 and removed > 0 and len(sizes) > 2


def _symmetry(x, out):
    """Which of the 8 symmetries of the scene the output shows: turned (portrait), and the side of
    the image box 1 ended on in x and in y."""
    h, w = x.shape[-2:]
    cx, cy = out["boxes"][out["labels"] == 1][0, :2].tolist()
    return (h > w, cx > 0.5, cy > 0.5)


def test_flips_all_gives_every_symmetry_and_the_others_only_theirs():
    img, target = _scene()
    seen = {}
    for flips in FLIPS:
        t = build_transforms(True, scales=[120], max_size=400, crop=None, flips=flips)
        seen[flips] = set()
        for seed in range(64):
            torch.manual_seed(seed)
            seen[flips].add(_symmetry(*t(img, target)))
    assert len(seen["all"]) == 8
    assert seen["horizontal"] == {(False, False, False), (False, True, False)}
    assert seen["none"] == {(False, False, False)}


def test_rotate90_moves_pixels_and_boxes_exactly():
    img, target = _scene()
    t = build_transforms(False, scales=[120], max_size=400)
    x, out = t(img, target)
    turn = build_transforms(True, scales=[120], max_size=400, crop=None, flips="none")
    turn.pipeline.transforms.insert(0, rotate90(p=1.0))
    y, turned = turn(img, target)
    assert y.shape[-2:] == (160, 120)
    torch.testing.assert_close(y, torch.rot90(x, 1, (-2, -1)))
    # cx, cy, w, h normalised: a counter-clockwise turn sends (cx, cy) to (cy, 1 - cx) and swaps w and h.
    cx, cy, bw, bh = out["boxes"].unbind(-1)
    torch.testing.assert_close(turned["boxes"], torch.stack([cy, 1 - cx, bh, bw], -1))
    # Four turns give the input back, boxes included.
    four = rotate90(p=1.0)
    boxes = tv_tensors.BoundingBoxes(target["boxes"], format="XYXY", canvas_size=(120, 160))
    image = tv_tensors.Image(torch.arange(120 * 160.0).reshape(1, 120, 160))
    a, b = image, boxes
    for _ in range(4):
        a, b = four(a, b)
    assert torch.equal(a, image) and torch.equal(b, boxes) and b.canvas_size == (120, 160)


def test_color_jitter_changes_pixels_not_boxes():
    img, target = _scene()
    plain = build_transforms(True, scales=[120], max_size=400, crop=None, flips="none")
    jitter = build_transforms(True, scales=[120], max_size=400, crop=None, flips="none", color_jitter=0.4)
    a, ta = plain(img, target)
    differ = 0
    for seed in range(4):
        torch.manual_seed(seed)
        b, tb = jitter(img, target)
        torch.testing.assert_close(tb["boxes"], ta["boxes"])
        differ += not torch.allclose(a, b, atol=1e-3)
    assert differ >= 3


def test_train_same_seed_same_output():
    img, target = _scene()
    t = build_transforms(True, scales=range(112, 161, 16), max_size=266, crop=CROP)
    torch.manual_seed(3)
    a = t(img, target)
    torch.manual_seed(3)
    b = t(img, target)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1]["boxes"], b[1]["boxes"])


# (h, w) -> expected (h, w) for short side 800 / max 1333, values from the official rule.
@pytest.mark.parametrize(
    "hw,expected",
    [
        ((480, 640), (800, 1066)),
        ((640, 480), (1066, 800)),
        ((500, 500), (800, 800)),
        ((100, 1000), (133, 1330)),  # long side capped: short = round(1333*100/1000)
        ((1000, 100), (1330, 133)),
        ((600, 1000), (800, 1333)),
        ((800, 1200), (800, 1200)),  # already the right size: untouched
    ],
)
def test_val_resize_rule(hw, expected):
    assert resized_hw(*hw, 800, 1333) == expected
    h, w = hw
    t = build_transforms(False)
    box = torch.tensor([[0.0, 0.0, w / 2, h / 4]])
    x, out = t(Image.new("RGB", (w, h)), {"boxes": box, "labels": torch.tensor([3])})
    assert tuple(x.shape[-2:]) == expected
    assert out["size"].tolist() == list(expected)
    # Normalised coordinates are invariant to an aspect-preserving resize.
    torch.testing.assert_close(out["boxes"], torch.tensor([[0.25, 0.125, 0.5, 0.25]]), atol=2e-3, rtol=0)


def test_val_normalises_with_imagenet_stats():
    t = build_transforms(False, scales=[64], max_size=100)
    x, out = t(Image.new("RGB", (64, 64), (255, 255, 255)), {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)})
    expected = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(x[:, 10, 10], expected)
    assert out["boxes"].shape == (0, 4)
