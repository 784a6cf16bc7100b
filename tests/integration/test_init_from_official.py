"""A full-size official R50 hybrid checkpoint (COCO, 91 sparse class ids, 300 + 1500 queries) starts a
3-class model with 100 + 300 queries: the report accounts for every tensor and one training step runs.

The checkpoint is made from the official key list (tests/fixtures/checkpoint_keys) with random tensors.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from hdetr.weights import load_weights, safe_torch_load
from hdetr.config import load_config
from hdetr.run_folder import INIT_REPORT as REPORT_FILE
from hdetr.engine.sampling import seed_everything
from hdetr.engine.train import Trainer
from hdetr.models import build_model
from support.finetune_helpers import relabelled_dataset
from support.official_checkpoints import KEYS, fake_official_checkpoint

PRIOR_BIAS = torch.tensor(-math.log((1 - 0.01) / 0.01), dtype=torch.float32).item()  # as nn.init stores it


@pytest.mark.slow
def test_official_r50_hybrid_initialises_a_3_class_model_with_100_plus_300_queries(synth_data, tmp_path):
    spec = json.loads((KEYS / "checkpoint_keys_r50_hybrid_headline.json").read_text())
    official = tmp_path / "official.pth"
    fake_official_checkpoint(official, spec)
    raw = safe_torch_load(official)["model"]
    data = relabelled_dataset(synth_data, tmp_path / "data")  # Person, SQUARE, car
    # 256 px: two-stage selects its 400 queries among the encoder's tokens (1360 at this size).
    cfg = load_config("r50_hybrid_branch_12ep", [
        f"data.train={data}", f"train.init_from={official}", "model.num_queries=100",
        "hybrid.num_queries_one2many=300", "train.batch_size=1", "train.num_workers=0", "train.max_iters=1",
        "train.eval_every=10", "data.train_scales=[256]", "data.val_scale=256", "data.max_size=256", "data.crop=false"])
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    mine = {k: v.clone() for k, v in trainer.model.state_dict().items()}

    report = json.loads((tmp_path / "run" / REPORT_FILE).read_text())
    c = report["counts"]
    source = load_weights(official).state
    assert c["model_tensors"] == len(mine) and c["source_tensors"] == len(source)
    assert c["loaded"] + c["partly_copied"] + c["reinitialised"] == len(mine)
    assert c["loaded"] + c["partly_copied"] + c["unused"] == len(source)
    partly = sorted(e["name"] for e in report["partly_copied"])
    assert partly == sorted([f"class_heads.{i}.{p}" for i in range(7) for p in ("weight", "bias")]
                            + ["query_embedding.weight"])
    assert (c["reinitialised"], c["unused"]) == (0, 0)
    assert [(e["class"], e["from"], e["source_index"]) for e in report["classes"]["kept"]] == [
        ("Person", "person", 1), ("car", "car", 3)]
    assert report["classes"]["new"] == ["SQUARE"]

    seed_everything(cfg.train.seed)
    fresh = build_model(cfg).state_dict()
    for i in range(7):  # 6 decoder layers + the two-stage encoder head: official class_embed.i
        for p in ("weight", "bias"):
            ours, theirs = mine[f"class_heads.{i}.{p}"], raw[f"class_embed.{i}.{p}"]
            assert ours.shape[0] == 3 and theirs.shape[0] == 91
            assert torch.equal(ours[0], theirs[1]) and torch.equal(ours[2], theirs[3])
            assert torch.equal(ours[1], fresh[f"class_heads.{i}.{p}"][1])
        assert mine[f"class_heads.{i}.bias"][1].item() == PRIOR_BIAS
    q, oq = mine["query_embedding.weight"], raw["query_embed.weight"]
    assert q.shape == (400, 256) and oq.shape == (1800, 256)
    assert torch.equal(q[:100], oq[:100]) and torch.equal(q[100:], oq[300:600])
    assert torch.equal(mine["transformer.query_pos_proj.weight"], raw["transformer.pos_trans.weight"])
    assert torch.equal(mine["backbone.body.layer4.2.conv3.weight"], raw["backbone.0.body.layer4.2.conv3.weight"])

    result = trainer.run()
    assert result.steps == 1 and result.skipped_steps == 0
    after = trainer.model.state_dict()
    assert not torch.equal(after["class_heads.5.weight"], mine["class_heads.5.weight"])
    assert torch.equal(after["backbone.body.layer1.0.conv1.weight"], mine["backbone.body.layer1.0.conv1.weight"])
