"""hdetr serve: the HTTP API on a tiny model (FastAPI TestClient), bad uploads, tile options, concurrency."""

from __future__ import annotations

import asyncio
import io
import socket
import threading
import time

import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi", reason="needs the serve extra: pip install 'hdetr[serve]'")
import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from hdetr import Detector  # noqa: E402
from hdetr.cli import main as cli_main  # noqa: E402
from hdetr.serve import create_app  # noqa: E402
from support.serve_helpers import (  # noqa: E402
    CAT_IDS, CLASS_NAMES, StubDetector, UntiledStubDetector, held_stub, flat_png, image_bytes, save_tiny_model,
)


@pytest.fixture(scope="module")
def model_dir(module_dir):
    return save_tiny_model(module_dir("serve") / "model")


@pytest.fixture(scope="module")
def detector(model_dir):
    torch.set_num_threads(1)
    return Detector.from_checkpoint(model_dir)


@pytest.fixture(scope="module")
def client(detector):
    return TestClient(create_app(detector, threshold=0.0, max_upload_bytes=200_000, max_pixels=500 * 500))


def upload(data: bytes, name: str = "scene.png", field: str = "image", mime: str = "image/png"):
    return {field: (name, data, mime)}


def test_predict_returns_the_detectors_boxes_as_coco_json(client, detector):
    data = image_bytes(96, 72)
    r = client.post("/predict", files=upload(data))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["image"] == {"file_name": "scene.png", "width": 96, "height": 72}
    assert body["threshold"] == 0.0 and "tile" not in body
    direct = detector.predict(Image.open(io.BytesIO(data)), threshold=0.0)
    dets = body["detections"]
    assert len(dets) == len(direct) == 20  # topk of the tiny model
    torch.testing.assert_close(torch.tensor([d["bbox_xyxy"] for d in dets]), direct.boxes)
    torch.testing.assert_close(torch.tensor([d["score"] for d in dets]), direct.scores)
    for d, label in zip(dets, direct.labels.tolist()):
        x0, y0, x1, y1 = d["bbox_xyxy"]
        assert d["bbox"] == pytest.approx([x0, y0, x1 - x0, y1 - y0])
        assert d["label"] == label and d["category_id"] == CAT_IDS[label] and d["category_name"] == CLASS_NAMES[label]


def test_threshold_as_form_field_or_query_parameter(client):
    scores = [d["score"] for d in client.post("/predict", files=upload(image_bytes())).json()["detections"]]
    cut = sorted(scores)[len(scores) // 2]
    expected = sum(s >= cut for s in scores)
    assert 0 < expected < len(scores)
    by_form = client.post("/predict", files=upload(image_bytes()), data={"threshold": str(cut)}).json()
    by_query = client.post(f"/predict?threshold={cut}", files=upload(image_bytes())).json()
    for body in (by_form, by_query):
        assert body["threshold"] == cut and len(body["detections"]) == expected
        assert all(d["score"] >= cut for d in body["detections"])


def test_health_model_metadata_and_page(client):
    assert client.get("/health").json() == {"status": "ok"}
    info = client.get("/model").json()
    assert info["class_names"] == CLASS_NAMES
    assert info["categories"] == [{"id": i, "name": n} for i, n in zip(CAT_IDS, CLASS_NAMES)]
    assert info["input_size"] == {"shorter_side": 64, "max_size": 80}
    assert info["config"]["num_queries"] == 10 and info["config"]["backbone"] == "tiny"
    assert info["default_threshold"] == 0.0 and info["limits"]["max_upload_bytes"] == 200_000
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert '<canvas id="canvas"' in page.text and 'src="/static/app.js"' in page.text
    assert client.get("/static/app.js").status_code == 200 and client.get("/static/style.css").status_code == 200


BAD_REQUESTS = {
    "not an image": (dict(files=upload(b"hello, this is text", "notes.txt", mime="text/plain")), 415, "not an image"),
    "truncated image": (dict(files=upload(image_bytes(fmt="JPEG")[:300], "cut.jpg")), 415, "cannot be decoded"),
    "empty file": (dict(files=upload(b"", "empty.png")), 400, "empty"),
    "missing field": (dict(files=upload(image_bytes(), field="picture")), 400, "no 'image' field"),
    "text instead of a file": (dict(data={"image": "scene.png"}, files=upload(b"x", field="other")), 400, "file upload"),
    "not multipart": (dict(json={"image": "scene.png"}), 400, "multipart/form-data"),
    "too many bytes": (dict(files=upload(image_bytes(300, 240, fmt="BMP"), "big.bmp")), 413, "upload limit"),
    "too many pixels": (dict(files=upload(flat_png(600, 500), "wide.png")), 413, "megapixels"),
    "threshold not a number": (dict(files=upload(image_bytes()), data={"threshold": "high"}), 422, "threshold"),
    "threshold above 1": (dict(files=upload(image_bytes()), data={"threshold": "1.5"}), 422, "[0, 1]"),
    "tile not an integer": (dict(files=upload(image_bytes()), data={"tile": "big"}), 422, "tile must be"),
    "overlap of 1": (dict(files=upload(image_bytes()), data={"tile": "64", "overlap": "1"}), 422, "overlap"),
    "overlap without tile": (dict(files=upload(image_bytes()), data={"overlap": "0.3"}), 422, "give tile too"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_request_gets_a_4xx_with_a_message_and_the_server_keeps_serving(client, case):
    kwargs, status, words = BAD_REQUESTS[case]
    r = client.post("/predict", **kwargs)
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]
    assert client.post("/predict", files=upload(image_bytes())).status_code == 200


def test_oversized_request_refused_before_reading_the_body(client):
    r = client.post("/predict", content=b"", headers={"content-type": "multipart/form-data; boundary=x",
                                                      "content-length": str(10**9)})
    assert r.status_code == 413 and "limited to 200000 bytes" in r.json()["detail"]


def test_tile_options_are_forwarded_only_when_given():
    stub = StubDetector()
    client = TestClient(create_app(stub, threshold=0.4))
    assert client.get("/model").json()["tiling"] is True
    for form, forwarded in (
        ({}, {"threshold": 0.4}),
        ({"threshold": "0.25"}, {"threshold": 0.25}),
        ({"tile": "640"}, {"threshold": 0.4, "tile": 640}),
        ({"tile": "512", "overlap": "0.3"}, {"threshold": 0.4, "tile": 512, "overlap": 0.3}),
    ):
        r = client.post("/predict", files=upload(image_bytes()), data=form)
        assert r.status_code == 200, r.text
        assert stub.calls[-1] == forwarded
        assert {k: r.json()[k] for k in forwarded} == forwarded
    r = client.post("/predict?tile=256&overlap=0.1", files=upload(image_bytes()))
    assert r.status_code == 200 and stub.calls[-1] == {"threshold": 0.4, "tile": 256, "overlap": 0.1}


def test_a_detector_without_tiling_refuses_tile_options_but_serves_the_rest():
    stub = UntiledStubDetector()
    client = TestClient(create_app(stub))
    assert client.get("/model").json()["tiling"] is False
    r = client.post("/predict", files=upload(image_bytes()), data={"tile": "640"})
    assert r.status_code == 400 and "no tiled inference" in r.json()["detail"]
    assert client.post("/predict", files=upload(image_bytes())).status_code == 200
    assert stub.calls == [{"threshold": 0.5}]


def test_detector_errors_become_json_answers_and_the_server_keeps_serving():
    def fail(image):
        raise {"value": ValueError("image too small for tiles of 640"), "boom": RuntimeError("out of memory")}[mode]

    stub = StubDetector(predict=lambda image: fail(image) if mode else StubDetector()._empty)
    client = TestClient(create_app(stub), raise_server_exceptions=False)
    mode = "value"
    r = client.post("/predict", files=upload(image_bytes(), "a.png"))
    assert r.status_code == 422 and r.json()["detail"] == "'a.png': image too small for tiles of 640"
    mode = "boom"
    r = client.post("/predict", files=upload(image_bytes(), "a.png"))
    assert r.status_code == 500 and "RuntimeError: out of memory" in r.json()["detail"]
    mode = None
    assert client.post("/predict", files=upload(image_bytes())).status_code == 200


async def _post_all(app, n: int, stagger: float = 0.0):
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        async def one(i):
            await asyncio.sleep(i * stagger)
            return await http.post("/predict", files=upload(image_bytes(seed=i)))
        return await asyncio.gather(*(one(i) for i in range(n)))


def test_concurrent_requests_run_the_model_one_at_a_time():
    inside, most = 0, 0
    guard = threading.Lock()

    def slow(image):
        nonlocal inside, most
        with guard:
            inside += 1
            most = max(most, inside)
        time.sleep(0.05)
        with guard:
            inside -= 1
        return StubDetector()._empty

    stub = StubDetector(predict=slow)
    answers = asyncio.run(_post_all(create_app(stub, max_waiting=8), 6))
    assert [r.status_code for r in answers] == [200] * 6
    assert len(stub.calls) == 6 and most == 1


def test_a_full_queue_answers_503_at_once():
    release = threading.Event()
    stub = held_stub(release, 10)
    app = create_app(stub, max_waiting=1)

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            post = lambda: http.post("/predict", files=upload(image_bytes()))  # noqa: E731
            running, waiting = asyncio.create_task(post()), asyncio.create_task(post())
            while not stub.calls:  # the first one is inside the model, the second queued behind it
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)
            refused = await post()
            release.set()
            return refused, await running, await waiting

    refused, running, waiting = asyncio.run(scenario())
    assert refused.status_code == 503 and "busy" in refused.json()["detail"]
    assert running.status_code == 200 and waiting.status_code == 200


def test_serve_cli_refuses_a_missing_model_and_a_taken_port(model_dir, tmp_path, capsys):
    assert cli_main(["serve", str(tmp_path / "nothing")]) == 2
    assert "no such checkpoint" in capsys.readouterr().err
    assert cli_main(["serve", str(model_dir), "--threshold", "2"]) == 2
    assert "--threshold must be in [0, 1]" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert cli_main(["serve", str(model_dir), "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
