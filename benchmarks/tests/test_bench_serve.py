"""hdetr bench serve: a short load test against a real `hdetr serve` child process on localhost."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("fastapi", reason="needs the serve extra: pip install 'hdetr[serve]'")

from benchmarks.serve import load, summarise  # noqa: E402
from benchmarks.__main__ import main as cli_main  # noqa: E402
from support.serve_helpers import StubDetector, image_bytes, save_tiny_model  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.mark.timeout(300)
def test_bench_serve_runs_the_cli_server_and_reports_figures(tmp_path, capsys):
    model = save_tiny_model(tmp_path / "model")
    out = tmp_path / "serve.json"
    assert cli_main(["serve", str(model), "--clients", "2", "--requests", "6", "--size", "96x128",
                     "--threads", "1", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["clients"] == 2 and r["warmup_requests"] == 4 and r["warmup_errors"] == 0
    assert r["requests_done"] == r["ok"] == 6 and r["errors"] == 0 and r["server_alive_at_end"]
    assert r["image"]["width"] == 128 and r["image"]["height"] == 96
    lat = r["latency_ms"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert r["requests_per_s"] > 0 and r["seconds"] > 0
    rss = r["server_rss_mb"]
    assert rss["before_warmup"] > 50 and rss["after_warmup"] > 50 and rss["peak"] >= rss["after_warmup"] * 0.9  # a Python + torch process
    series = r["server_rss_series_s_mb"]
    assert series and all(t >= 0 and mb > 50 for t, mb in series) and series == sorted(series, key=lambda p: p[0])
    assert r["machine"]["cpu"] and r["command"].startswith(f"hdetr bench serve {model} --clients 2 --requests 6")
    assert "6 requests, 2 clients" in capsys.readouterr().out


def test_load_counts_refused_requests_as_errors():
    from hdetr.serve import create_app
    from hdetr.serve.server import background_server

    with background_server(create_app(StubDetector())) as url:
        bad = load(url, b"not an image", 0.5, clients=2, requests=5, max_seconds=30)
        good = load(url, image_bytes(), 0.5, clients=2, requests=3, max_seconds=30)
    assert len(bad["errors"]) == 5 and not bad["latencies"] and all("HTTP 415" in e for e in bad["errors"])
    assert len(good["latencies"]) == 3 and not good["errors"]
    s = summarise(bad, 100.0, 101.0, [100.0, 102.0], 5, rss_start=90.0)
    assert s["errors"] == 5 and s["ok"] == 0
    assert s["server_rss_mb"] == {"before_warmup": 90.0, "after_warmup": 100.0, "end": 101.0, "peak": 102.0,
                                  "growth": 1.0}


def test_bench_serve_refuses_a_missing_model_and_an_unreadable_image(tmp_path, capsys):
    assert cli_main(["serve", str(tmp_path / "nothing")]) == 2
    assert "no such checkpoint" in capsys.readouterr().err
    (tmp_path / "model").mkdir()
    (tmp_path / "notes.jpg").write_text("text")
    assert cli_main(["serve", str(tmp_path / "model"), "--image", str(tmp_path / "notes.jpg")]) == 2
    assert "notes.jpg: not an image" in capsys.readouterr().err
