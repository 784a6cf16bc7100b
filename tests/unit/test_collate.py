import torch

from hdetr.data.collate import collate


def _batch():
    torch.manual_seed(0)
    # Values kept strictly away from 0 so any zero pixel must come from padding.
    a = torch.rand(3, 5, 7) + 1.0
    b = -torch.rand(3, 8, 4) - 1.0
    return [(a, {"image_id": torch.tensor(1)}), (b, {"image_id": torch.tensor(2)})]


def test_collate_pads_to_max_and_masks_padding_only():
    batch = _batch()
    images, mask, targets = collate(batch)
    assert images.shape == (2, 3, 8, 7)
    assert mask.shape == (2, 8, 7) and mask.dtype == torch.bool
    for i, (im, _) in enumerate(batch):
        h, w = im.shape[-2:]
        assert torch.equal(images[i, :, :h, :w], im)
        assert not mask[i, :h, :w].any()
        expected_pad = torch.ones(8, 7, dtype=torch.bool)
        expected_pad[:h, :w] = False
        assert torch.equal(mask[i], expected_pad)
        assert torch.equal(images[i][:, expected_pad], torch.zeros(3, int(expected_pad.sum())))
    assert [int(t["image_id"]) for t in targets] == [1, 2]


def test_collate_size_divisibility():
    images, mask, _ = collate(_batch(), size_divisibility=32)
    assert images.shape[-2:] == (32, 32)
    assert mask[0, 5:, :].all() and mask[0, :, 7:].all()
    assert not mask[1, :8, :4].any()


def test_collate_single_image_has_no_padding():
    a = torch.rand(3, 4, 6) + 1
    images, mask, _ = collate([(a, {})])
    assert not mask.any()
    assert torch.equal(images[0], a)
