"""The step benchmark: the record run.py writes, and compare over records."""

import json
import sys

import jax
import numpy as np
import pytest

import run
from gptjax.bench.__main__ import main
from gptjax.bench.flops import train_flops
from gptjax.bench.records import RECORD_FIELDS, load_records
from gptjax.model import GPT2Config

TINY = ["--config.model.arch.n_layer=1", "--config.model.arch.n_embd=32", "--config.model.arch.n_head=2",
        "--config.model.arch.n_positions=16", "--config.tokenizer.vocab_size=300", "--config.data.max_length=16",
        "--config.train.batch_size=8", "--config.train.eval_batch_size=8"]


@pytest.fixture(scope="module")
def tiny_record(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("bench")
    results = workdir / "results" / "cpu.jsonl"
    argv = ["--config=demo", f"--workdir={workdir}", "--mode=benchmark", f"--results={results}",
            "--benchmark_steps=3", "--benchmark_warmup=1", *TINY]
    run.main(argv)
    return workdir, results


def test_benchmark_mode_writes_the_record(tiny_record):
    workdir, results = tiny_record
    record = json.loads((workdir / "benchmark.json").read_text())
    assert set(RECORD_FIELDS) <= set(record)
    for key in ("tokens_per_sec", "step_time_ms", "compile_time_s", "mfu", "samples_per_sec"):
        assert isinstance(record[key], float) and record[key] > 0, key
    assert isinstance(record["peak_memory_bytes"], int) and record["peak_memory_bytes"] > 0
    assert record["device_kind"] == jax.devices()[0].device_kind
    assert record["num_devices"] == jax.device_count()
    assert record["framework"] == "gptjax" and record["config"] == "demo"
    assert (record["batch_size"], record["seq_len"], record["num_labels"]) == (8, 16, 9)
    assert record["compilations_after_warmup"] == 0
    assert record["steps_timed"] == 3
    # A CPU's peak: the matmul timed in turn with the steps.
    low, high = record["peak_flops_spread"]
    assert 0 < low <= record["peak_flops_per_device"] <= high and record["peak_source"].startswith("measured")
    assert record["eval"]["compilations_after_warmup"] == 0 and record["eval"]["tokens_per_sec"] > 0
    assert record["versions"]["jax"] == jax.__version__
    # The FLOPs are those of the shrunk model: 1 layer, D = 32, vocab 300, 9 labels.
    config = GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=16, vocab_size=300)
    assert record["flops_per_step"] == train_flops(config, "token_classification", 9, 8, 16)
    lines = results.read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0]) == record


@pytest.mark.parametrize("flag", ["--benchmark_steps=0", "--benchmark_warmup=-1"])
def test_benchmark_counts_are_checked_before_anything_runs(flag, tmp_path, capsys):
    with pytest.raises(SystemExit):
        run.main(["--config=demo", f"--workdir={tmp_path / 'w'}", "--mode=benchmark", flag])
    assert "at least 1 timed step" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def test_compare_prints_a_table_and_draws_a_chart(tiny_record, tmp_path, capsys):
    workdir, results = tiny_record
    record = json.loads((workdir / "benchmark.json").read_text())
    other = dict(record, framework="pytorch-eager", tokens_per_sec=12.5, mfu=None, device_kind="NVIDIA H200")
    (tmp_path / "other.jsonl").write_text(json.dumps(other) + "\n")
    chart = tmp_path / "chart.png"
    main(["compare", str(workdir / "benchmark.json"), str(tmp_path / "other.jsonl"), "--out", str(chart)])
    table = capsys.readouterr().out
    rows = [line for line in table.splitlines() if "demo" in line]
    assert len(rows) == 2
    assert "gptjax" in rows[0] and f"{record['tokens_per_sec']:.0f}" in rows[0]
    assert "pytorch-eager" in rows[1] and "NVIDIA H200" in rows[1] and " 12 " in rows[1]
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_without_matplotlib_names_the_extra(tiny_record, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    workdir, _ = tiny_record
    with pytest.raises(SystemExit, match=r"error: the chart needs matplotlib: pip install 'gptjax\[plot\]'"):
        main(["compare", str(workdir / "benchmark.json"), "--out", str(tmp_path / "chart.png")])
    assert "gptjax" in capsys.readouterr().out  # the table still printed
    assert not (tmp_path / "chart.png").exists()


def test_load_records_reads_json_and_jsonl(tmp_path):
    one = {"framework": "a", "tokens_per_sec": 1.0}
    (tmp_path / "benchmark.json").write_text(json.dumps(one, indent=2))
    (tmp_path / "r.jsonl").write_text(json.dumps(one) + "\n" + json.dumps(dict(one, framework="b")) + "\n")
    records = load_records([tmp_path / "benchmark.json", tmp_path / "r.jsonl"])
    assert [r["framework"] for r in records] == ["a", "a", "b"]
    np.testing.assert_equal(records[0], one)
