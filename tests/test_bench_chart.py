"""compare's chart: how records become panels, bars and labels, its size, and `gptjax compare`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gptjax import cli
from gptjax.bench import chart

ROOT = Path(__file__).resolve().parents[1]


def record(**kw):
    r = {"framework": "gptjax", "config": "ner", "model": "gpt2", "batch_size": 8, "seq_len": 128,
         "dtype": "float32", "device_kind": "cpu", "num_devices": 1, "versions": {"jax": "0.10.2"},
         "tokens_per_sec": 250.0, "step_time_ms": 4000.0, "mfu": 0.5, "timestamp": "2026-12-03T10:00:00+00:00"}
    return dict(r, **kw)


def decode_record(**kw):
    return record(benchmark="generate", config="generate", batch_size=1, seq_len=256, prompt_length=128,
                  max_new_tokens=128, tokens_per_sec=40.0, mfu=None, **kw)


def test_training_and_decoding_go_to_panels_of_their_own():
    groups = chart.group_records([record(), decode_record(), record(batch_size=16)])
    assert [g.panel for g in groups] == ["train", "train", "decode"]
    assert "train" in chart.PANELS["train"] and "generated" in chart.PANELS["decode"]


def test_repeats_of_a_setting_on_a_day_are_one_bar_with_their_spread():
    groups = chart.group_records([record(tokens_per_sec=v) for v in (200.0, 300.0, 250.0)])
    assert len(groups) == 1
    g = groups[0]
    assert (g.median, min(g.values), max(g.values)) == (250.0, 200.0, 300.0)
    assert g.label.endswith("(n=3)")


def test_runs_that_differ_in_date_version_or_device_are_told_apart():
    runs = [record(), record(timestamp="2026-11-28T23:00:00+00:00"), record(versions={"jax": "0.12.0.1"}),
            record(device_kind="NVIDIA H100 80GB HBM3"), record(framework="pytorch-eager", versions={"torch": "2.13.0"})]
    groups = chart.group_records(runs)
    assert len(groups) == len(runs)
    assert len({(g.section, g.label) for g in groups}) == len(runs)
    labels = " | ".join(g.label for g in groups)
    assert "2026-11-28" in labels and "2026-12-03" in labels
    assert "jax 0.12.0.1" in labels and "jax 0.10.2" in labels and "torch 2.13.0" in labels
    assert any("H100" in g.section for g in groups) and any("cpu" in g.section for g in groups)


def test_bars_sort_by_number_not_text():
    groups = chart.group_records([record(batch_size=b) for b in (16, 4, 8)])
    assert [g.label.split("batch ")[1].split(" ")[0] for g in groups] == ["4", "8", "16"]


def test_sections_head_their_groups():
    groups = chart.group_records([record(), record(model="gpt2-medium"), record(batch_size=4)])
    rows = chart.rows(groups)
    headings = [r for r in rows if isinstance(r, str)]
    assert len(headings) == 2 and isinstance(rows[0], str) and len(rows) == 5


@pytest.mark.parametrize("values, log", [([250.0, 9169.0], True), ([200.0, 400.0, 1000.0], False), ([5.0], False)])
def test_a_log_axis_when_values_span_more_than_tenfold(values, log):
    assert chart.log_axis(values) is log


def test_many_records_make_a_bounded_chart():
    runs = [record(batch_size=b, timestamp=f"2026-{m:02d}-{d:02d}T00:00:00+00:00")
            for b in (1, 2, 4, 8) for m in (1, 2, 3) for d in range(1, 29)]
    groups, left_out = chart.cap(chart.group_records(runs))
    assert len(groups) == chart.MAX_BARS and left_out == len(runs) - chart.MAX_BARS
    assert all(g.day.startswith("2026-03") for g in groups)  # the most recent kept
    width, height = chart.figure_size([len(chart.rows(groups))])
    assert width * chart.DPI <= 2000 and height * chart.DPI <= 2000
    many = chart.figure_size([chart.MAX_BARS + 10])
    assert chart.figure_size([1])[0] == many[0]  # the width does not grow with the records


def test_the_drawn_chart_has_that_size(tmp_path):
    pytest.importorskip("matplotlib")
    from PIL import Image

    runs = [record(batch_size=b, tokens_per_sec=float(b * 100), timestamp=f"2026-11-{d:02d}T00:00:00+00:00")
            for b in range(1, 30) for d in (1, 2)] + [decode_record()]
    chart.plot(runs, tmp_path / "c.png")
    width, height = Image.open(tmp_path / "c.png").size
    assert 400 <= width <= 2000 and 300 <= height <= 2000


def _records_file(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in (record(), decode_record())))
    return path


def test_gptjax_compare_prints_the_table_and_writes_nothing_without_out(tmp_path, monkeypatch, capsys):
    path = _records_file(tmp_path)
    monkeypatch.chdir(tmp_path)
    cli.main(["compare", str(path)])
    out = capsys.readouterr().out
    assert "tokens/s" in out and "250" in out and "chart" not in out
    assert os.listdir(tmp_path) == ["r.jsonl"]


def test_gptjax_compare_from_the_command_line_draws_with_out(tmp_path):
    path = _records_file(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, str(ROOT / "run.py"), "compare", str(path), "--out", str(tmp_path / "c.png")],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert "250" in done.stdout and f"chart: {tmp_path / 'c.png'}" in done.stdout
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(os.listdir(tmp_path)) == ["c.png", "r.jsonl"]


@pytest.mark.parametrize("content, says", [(None, "No such file"), ('{"a":\n', "not benchmark records")])
def test_a_missing_or_broken_records_file_is_one_line_naming_it(content, says, tmp_path, capsys):
    path = tmp_path / "r.jsonl"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SystemExit, match=rf"^error: {path}: {says}"):
        cli.main(["compare", str(path)])
