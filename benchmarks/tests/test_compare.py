"""benchmarks/compare.py: the side-by-side comparison on a tiny synthetic dataset, and its refusals."""

from __future__ import annotations

import json

import pytest

from benchmarks import compare, compare_screen
from hdetr.data.synthetic import write_synthetic_dataset

BUDGET_S = 12


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cmp") / "ds"
    write_synthetic_dataset(root, num_train=8, num_val=4, image_size=64, seed=0)
    return root


@pytest.mark.slow
def test_tiny_comparison_writes_real_results_and_skips_finished_arms(data, tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = [str(data), "--budget", f"{BUDGET_S}s", "--out", str(out), "--set", "train.batch_size=2"]
    assert compare.main(argv) == 0
    first = capsys.readouterr().out
    report = json.loads((out / "compare.json").read_text())
    assert report["val_images"] == 4 and report["budget_seconds"] == BUDGET_S and report["clock"] == "cpu"
    assert set(report["arms"]) == {"baseline", "branch", "fcos"}
    keys = {c["key"] for c in report["data_choices"]}
    assert {"model.num_queries", "data.val_scale", "train.epochs"} <= keys
    for name, arm in report["arms"].items():
        (run,) = arm["runs"]
        assert 0.0 <= arm["AP"] <= 1.0 and 0.0 <= arm["AP50"] <= 1.0
        curve = run["curve"]
        assert curve and [c["cpu_s"] for c in curve] == sorted(c["cpu_s"] for c in curve)
        # The end of the budget is the last evaluation; the run's own CPU clock stopped near the budget.
        assert arm["AP50"] == curve[-1]["AP50"] and arm["best_AP50"] == max(c["AP50"] for c in curve)
        assert 0 < curve[-1]["cpu_s"] <= run["cpu_seconds"] and run["steps"] > 0, name
        assert run["cpu_seconds"] <= BUDGET_S * 1.5, name
    assert report["arms"]["baseline"]["detector"] == "hdetr one-to-one"
    assert report["arms"]["branch"]["detector"] == "hdetr hybrid branch"
    assert [r["comparison"] for r in report["verdict"]][0] == "hybrid branch vs one-to-one baseline"
    assert report["verdict"][1]["b"] == "fcos"
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "compare.md").read_text()
    assert "| fcos |" in md and "4 images" in md and "hybrid branch vs one-to-one baseline" in first
    # Run again: every arm is finished, nothing trains, the same numbers come out.
    assert compare.main(argv) == 0
    again = capsys.readouterr().out
    assert again.count("finished before, skipped") == 3 and "training for" not in again
    assert json.loads((out / "compare.json").read_text())["arms"]["fcos"]["AP50"] == report["arms"]["fcos"]["AP50"]
    # The screening table of one or more such folders: every run, its end and its curve, the folder's --set.
    table_file = tmp_path / "screen.json"
    assert compare_screen.main([str(table_file), str(out), "--what", "tiny"]) == 0
    table = json.loads(table_file.read_text())
    assert [(r["name"], r["arm"]) for r in table["runs"]] == [("cmp", arm) for arm in report["arms"]]
    for r in table["runs"]:
        assert r["set"] == ["train.batch_size=2"] and r["AP50"] == report["arms"][r["arm"]]["AP50"]
        assert [c["AP50"] for c in r["curve"]] == [c["AP50"] for c in report["arms"][r["arm"]]["runs"][0]["curve"]]
    # It writes over its own table, not over a file it did not write.
    assert compare_screen.main([str(table_file), str(out)]) == 0
    assert compare_screen.main([str(out / "compare.md"), str(out)]) == 2
    assert "not a screening table" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--budget", "15"], "--budget: expected a duration such as 90s, 15m or 1.5h, got '15'"),
    (["--budget", "0m"], "--budget: the duration must be more than 0"),
    (["--arms", "baseline,yolo"], "--arms: unknown arm 'yolo'"),
    (["--seeds", "0"], "--seeds must be >= 1"),
    (["--jobs", "0"], "--jobs must be >= 1"),
])
def test_bad_arguments_are_one_line_errors(data, tmp_path, capsys, extra, message):
    assert compare.main([str(data), "--out", str(tmp_path / "o"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not (tmp_path / "o").exists()


def test_wrong_path_names_it(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert compare.main([str(missing), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and str(missing) in err and "\n" not in err


def test_dataset_without_validation_split_asks_for_val(tmp_path, capsys):
    root = tmp_path / "ds"
    write_synthetic_dataset(root, num_train=4, num_val=2, image_size=64, seed=0)
    single = f"{root / 'train'}:{root / 'train' / '_annotations.coco.json'}"
    assert compare.main([single, "--out", str(tmp_path / "o")]) == 2
    assert "no validation split of its own: give one with --val" in capsys.readouterr().err


@pytest.mark.slow
def test_runs_side_by_side_in_their_own_processes(data, tmp_path, capfd):
    """--jobs 2: the two runs train in two child processes at once, each line of a child names its run,
    and both are finished and reported as when trained in turn (the skipping of finished runs is the
    test above's)."""
    out = tmp_path / "cmp"
    argv = [str(data), "--budget", "5s", "--out", str(out), "--arms", "baseline,fcos",
            "--set", "train.batch_size=2", "--jobs", "2"]
    assert compare.main(argv) == 0
    printed = capfd.readouterr().out
    assert printed.count("training for") == 2 and "2 at a time" in printed
    assert "[fcos s0] " in printed and "[baseline s0] " in printed
    report = json.loads((out / "compare.json").read_text())
    assert report["jobs"] == 2
    for arm in ("baseline", "fcos"):
        (run,) = report["arms"][arm]["runs"]
        assert run["steps"] > 0 and 0 < run["cpu_seconds"] <= 5 * 1.5
        assert (out / "runs" / f"{arm}_s0" / "result.json").exists()
