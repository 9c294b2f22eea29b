"""The decoding benchmark: gptjax's records beside PyTorch's (benchmarks/torch_decoding.py), and
run.py --mode=benchmark --benchmark=generate."""

import json
import sys
from pathlib import Path

from test_generate import TINY

import run
from gptjax.bench import decoding
from gptjax.bench.records import DECODING_FIELDS, format_table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))  # as benchmarks/generate.py runs

from torch_decoding import TorchDecoding  # noqa: E402


def test_benchmark_records():
    records = decoding.run(TINY, model_name="tiny", batch_sizes=(1, 2), prompt_length=8, max_new_tokens=4,
                           repeats=1, mixed_requests=2, bandwidth_bytes=2**20, others=(TorchDecoding,))
    assert [(r["framework"], r["batch_size"]) for r in records] == [
        ("gptjax", 1), ("pytorch-eager", 1), ("gptjax", 2), ("pytorch-eager", 2)]
    for r in records:
        assert r["tokens_per_sec"] > 0 and r["decode_tokens_per_sec"] > 0 and r["time_to_first_token_ms"] > 0
        assert r["seq_len"] == 12 and r["benchmark"] == "generate"
    assert records[0]["recompiles"] == 0 and records[2]["recompiles"] == 0
    assert set(DECODING_FIELDS) <= set(records[0])
    assert 0 < records[0]["memory_bandwidth_fraction"] and "memory_bandwidth_fraction" not in records[2]
    assert records[0]["interleaved_with"] == ["pytorch-eager"] and records[1]["interleaved_with"] == ["gptjax"]
    assert "gptjax" in format_table(records)  # what `compare` prints


def test_benchmark_mode_times_decoding(tmp_path):
    run.main(["--config=demo", f"--workdir={tmp_path}", "--mode=benchmark", "--benchmark=generate",
              "--config.generate.batch_size=2", "--config.generate.prompt_length=8", "--config.generate.max_new_tokens=4",
              "--benchmark_steps=1", f"--results={tmp_path / 'records.jsonl'}"])
    records = [json.loads(line) for line in (tmp_path / "records.jsonl").read_text().splitlines()]
    # The package times gptjax alone: PyTorch's side is benchmarks/generate.py, outside it.
    assert [r["framework"] for r in records] == ["gptjax"]
    assert all(r["tokens_per_sec"] > 0 and r["batch_size"] == 2 for r in records)
    assert records[0]["recompiles"] == 0
    assert json.loads((tmp_path / "benchmark.json").read_text()) == records[0]
