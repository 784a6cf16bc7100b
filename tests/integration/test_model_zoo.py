"""Official detectors by name, without network: a server on 127.0.0.1 serves checkpoints built from the
official key lists (support/zoo_server.py); hdetr downloads, checks, converts and caches them."""

from __future__ import annotations

import hashlib
import json
import socket

import pytest
from PIL import Image

from hdetr.weights.download import DownloadError, download
from hdetr.weights.zoo import model_folder
from hdetr.cli import main
from hdetr.errors import UserError
from support.zoo_server import ZooServer, compact_official_checkpoint

pytestmark = pytest.mark.process  # a server thread

HYBRID = "r50_hybrid_branch_12ep"
FILE = ("r50_hybrid_branch_lambda1_group6_t1500_dp0_mqs_lft_deformable_detr_plus_iterative_bbox_refinement_plus_plus_"
        "two_stage_12eps.pth")


@pytest.fixture(scope="module")
def hybrid_bytes() -> bytes:
    return compact_official_checkpoint("checkpoint_keys_r50_hybrid_headline.json")


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HDETR_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


def serve(monkeypatch, files: dict[str, bytes]) -> ZooServer:
    server = ZooServer(files)
    monkeypatch.setenv("HDETR_ZOO_URL", server.url)
    return server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_predict_by_name_downloads_checks_converts_once_then_checks_sha(tmp_path, home, monkeypatch, hybrid_bytes,
                                                                         capsys):
    image = tmp_path / "photo.png"
    Image.new("RGB", (96, 64), (120, 90, 60)).save(image)
    with serve(monkeypatch, {FILE: hybrid_bytes}) as server:
        assert main(["predict", HYBRID, str(image), "--out", str(tmp_path / "out"), "--imgsz", "160"]) == 0
        assert [p for p, _ in server.requests] == [f"/{FILE}"]
        found = json.loads((tmp_path / "out" / "detections.json").read_text())
        assert isinstance(found, list) and (tmp_path / "out" / "photo.png").exists()
        record = json.loads((home / f"{HYBRID}.json").read_text())
        assert record["sha256"] == hashlib.sha256(hybrid_bytes).hexdigest() and record["downloaded"] is True
        assert (home / HYBRID / "model.safetensors").exists() and not list(home.glob("*.part"))
        assert "100 " not in capsys.readouterr().err  # no traceback-like noise; progress only on a terminal

        # Converted once: later uses (CLI and API) read the cache and ask the server nothing.
        from hdetr import Detector

        det = Detector.from_pretrained(HYBRID)
        assert det.cfg.hybrid.scheme == "branch" and det.class_names[1] == "person"
        assert main(["predict", HYBRID, str(image), "--out", str(tmp_path / "out2"), "--imgsz", "160"]) == 0
        from hdetr.config import load_config
        from hdetr.engine.init_from import load_init_source

        source = load_init_source(load_config("r50_finetune", [f"train.init_from={HYBRID}"]), resume=False)
        assert source.source == home / HYBRID and source.cfg.hybrid.num_queries_one2many == 1500
        assert len(server.requests) == 1
        assert main(["models"]) == 0
        assert any(l.split()[:3] == [HYBRID, "48.7", "yes"] for l in capsys.readouterr().out.splitlines())

        # The converted weights changed behind hdetr's back: refused, with what to do.
        weights = home / HYBRID / "model.safetensors"
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0xFF
        weights.write_bytes(bytes(data))
        assert main(["predict", HYBRID, str(image), "--out", str(tmp_path / "out3")]) == 2
        err = capsys.readouterr().err
        assert "sha256 differs" in err and f"delete {home / HYBRID}" in err

        # The downloaded file changed: its recorded sha256 no longer matches; refused before converting.
        import shutil

        shutil.rmtree(home / HYBRID)
        pth = home / f"{HYBRID}.pth"
        data = bytearray(pth.read_bytes())
        data[100] ^= 0xFF
        pth.write_bytes(bytes(data))
        with pytest.raises(UserError, match="differs from the one recorded when it was first used"):
            model_folder(HYBRID)
        assert not (home / HYBRID).exists() and len(server.requests) == 1


def test_offline_gives_one_line_with_the_url_and_what_to_do(tmp_path, home, monkeypatch, capsys):
    monkeypatch.setenv("HDETR_ZOO_URL", f"http://127.0.0.1:{free_port()}/")  # nothing listens there
    image = tmp_path / "photo.png"
    Image.new("RGB", (64, 64)).save(image)
    assert main(["predict", "r50_hybrid_branch_36ep", str(image), "--out", str(tmp_path / "out")]) == 2
    out, err = capsys.readouterr()
    err = err.strip()
    assert len(err.splitlines()) == 1 and "downloading" not in out  # the one line, nothing else about it
    assert "cannot download http://127.0.0.1:" in err and "_36eps.pth" in err
    assert f"put it at {home / 'r50_hybrid_branch_36ep.pth'}" in err and "hdetr convert FILE.pth OUT" in err
    assert not (tmp_path / "out" / "detections.json").exists()


@pytest.mark.slow
def test_a_file_downloaded_elsewhere_and_put_in_the_cache_is_used_offline(home, monkeypatch, hybrid_bytes):
    monkeypatch.setenv("HDETR_ZOO_URL", f"http://127.0.0.1:{free_port()}/")
    home.mkdir(parents=True)
    (home / f"{HYBRID}.pth").write_bytes(hybrid_bytes)
    folder = model_folder(HYBRID)
    record = json.loads((home / f"{HYBRID}.json").read_text())
    assert record["sha256"] == hashlib.sha256(hybrid_bytes).hexdigest() and record["downloaded"] is False
    assert (folder / "config.yaml").exists()


def test_interrupted_transfer_resumes_with_a_range_request(tmp_path, monkeypatch):
    payload = bytes(range(256)) * 4096  # 1 MiB
    with serve(monkeypatch, {"f.bin": payload}) as server:
        server.cuts = [300_000]
        answers = []
        download(server.url + "f.bin", tmp_path / "f.bin", progress=False, on_answer=lambda *a: answers.append(a))
        assert answers == [(0, len(payload))]  # announced once, at the first answer
        assert (tmp_path / "f.bin").read_bytes() == payload
        assert server.requests == [("/f.bin", None), ("/f.bin", "bytes=300000-")]


def test_transfer_that_keeps_breaking_off_keeps_the_part_and_the_next_call_resumes(tmp_path, monkeypatch):
    payload = bytes(range(256)) * 4096
    with serve(monkeypatch, {"f.bin": payload}) as server:
        server.cuts = [100_000] * 4
        with pytest.raises(DownloadError, match="broke off at 400000 of 1048576 bytes 4 times; run again to resume"):
            download(server.url + "f.bin", tmp_path / "f.bin", progress=False)
        assert not (tmp_path / "f.bin").exists() and (tmp_path / "f.bin.part").stat().st_size == 400_000
        download(server.url + "f.bin", tmp_path / "f.bin", progress=False)
        assert server.requests[-1] == ("/f.bin", "bytes=400000-")
        assert (tmp_path / "f.bin").read_bytes() == payload and not (tmp_path / "f.bin.part").exists()


def test_server_ignoring_the_range_restarts_from_zero(tmp_path, monkeypatch):
    payload = bytes(range(256)) * 1024
    (tmp_path / "f.bin.part").write_bytes(b"x" * 5000)  # not a prefix of the file
    with serve(monkeypatch, {"f.bin": payload}) as server:
        server.ignore_range = True
        download(server.url + "f.bin", tmp_path / "f.bin", progress=False)
    assert (tmp_path / "f.bin").read_bytes() == payload


def test_a_complete_part_is_placed_without_downloading_again(tmp_path, monkeypatch):
    payload = bytes(range(256)) * 64
    (tmp_path / "f.bin.part").write_bytes(payload)  # an earlier call stopped just before the rename
    with serve(monkeypatch, {"f.bin": payload}) as server:
        download(server.url + "f.bin", tmp_path / "f.bin", progress=False)
        assert server.requests == [("/f.bin", f"bytes={len(payload)}-")]
    assert (tmp_path / "f.bin").read_bytes() == payload and not (tmp_path / "f.bin.part").exists()


def test_404_names_the_url_and_leaves_nothing(home, monkeypatch):
    with serve(monkeypatch, {}) as server:
        with pytest.raises(UserError, match=r"_12eps\.pth: HTTP 404"):
            model_folder(HYBRID)
        assert len(server.requests) == 1
    assert sorted(p.name for p in home.iterdir() if not p.name.startswith(".")) == []


def test_truncated_file_is_refused_and_deleted_so_the_next_call_downloads_again(home, monkeypatch, hybrid_bytes):
    with serve(monkeypatch, {FILE: hybrid_bytes[: len(hybrid_bytes) // 2]}) as server:
        with pytest.raises(UserError, match="not a readable PyTorch checkpoint .*the downloaded file was deleted"):
            model_folder(HYBRID)
        assert not (home / f"{HYBRID}.pth").exists() and not (home / HYBRID).exists()
        server.files[FILE] = b"not a checkpoint"
        with pytest.raises(UserError, match=r"r50_hybrid_branch_12ep\.pth: refused to load.*file was deleted"):
            model_folder(HYBRID)
        assert len(server.requests) == 2


def test_wrong_structure_is_refused_before_converting(home, monkeypatch):
    # The one-to-one baseline without the tricks served under the hybrid's name: no query_embed.
    wrong = compact_official_checkpoint("checkpoint_keys_r50_baseline_no_tricks.json")
    with serve(monkeypatch, {FILE: wrong}):
        with pytest.raises(UserError, match=r"not the official r50_hybrid_branch_12ep checkpoint: tensor "
                                            r"query_embed.weight is missing \(1 missing, 0 unexpected"):
            model_folder(HYBRID)
    assert not (home / HYBRID).exists() and not (home / f"{HYBRID}.pth").exists()
