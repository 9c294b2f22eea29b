"""Decoding speed: gptjax's KV-cache decoding beside transformers' PyTorch generate, same shapes,
random weights (gptjax/bench/decoding.py says what is timed and how).

    python benchmarks/generate.py                        # gpt2, float32, prompt 128, 128 new, batch 1 and 16
    python benchmarks/generate.py --model=distilgpt2 --batch_sizes=1 --max_new_tokens=32 --no-torch
    python benchmarks/generate.py --results=benchmarks/results/cpu_generate.jsonl

Prints one JSON record a line (framework x batch size) and a summary with the gptjax / PyTorch
ratios; --results appends the records to a JSONL file that `python -m gptjax.bench compare`
reads. Timings on a machine others are using are not comparable across runs: compare the two
frameworks within one run (they take turns call by call).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from torch_decoding import TorchDecoding  # noqa: E402

from gptjax.bench import decoding  # noqa: E402
from gptjax.bench.records import finish  # noqa: E402
from gptjax.model import GPT2Config  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gpt2", help="a GPT-2 size: gpt2, gpt2-medium, ..., distilgpt2")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batch_sizes", default="1,16")
    parser.add_argument("--prompt_length", type=int, default=128)
    parser.add_argument("--max_new_tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls of each kind per framework")
    parser.add_argument("--mixed_requests", type=int, default=5, help="calls of random sizes counted for recompiles")
    parser.add_argument("--no-torch", action="store_true", help="leave out transformers' PyTorch generate")
    parser.add_argument("--torch_threads", type=int, help="torch.set_num_threads (default: torch's own, the cores)")
    parser.add_argument("--results", help="a JSONL file to append the records to")
    args = parser.parse_args(argv)

    config = GPT2Config.named(args.model, dtype=args.dtype)
    others = () if args.no_torch else (functools.partial(TorchDecoding, threads=args.torch_threads),)
    records = decoding.run(
        config, model_name=args.model, batch_sizes=[int(b) for b in args.batch_sizes.split(",")],
        prompt_length=args.prompt_length, max_new_tokens=args.max_new_tokens, repeats=args.repeats,
        others=others, mixed_requests=args.mixed_requests)
    for record in records:
        finish(record, results=args.results)
        print(json.dumps(record, sort_keys=True))
    keys = ("tokens_per_sec", "decode_tokens_per_sec", "prefill_tokens_per_sec", "time_to_first_token_ms")
    print(f"\n{'framework':14s} {'batch':>5s} " + " ".join(f"{k:>24s}" for k in keys) + f" {'compile s':>9s} {'recompiles':>10s}")
    for r in records:
        print(f"{r['framework']:14s} {r['batch_size']:5d} " + " ".join(f"{r[k] or 0:24.1f}" for k in keys)
              + f" {r['compile_time_s']:9.1f} {str(r['recompiles']):>10s}")
    for batch in sorted({r["batch_size"] for r in records}):
        pair = {r["framework"]: r for r in records if r["batch_size"] == batch}
        if len(pair) == 2:
            ratio = pair["gptjax"]["tokens_per_sec"] / pair["pytorch-eager"]["tokens_per_sec"]
            print(f"batch {batch}: gptjax / PyTorch tokens/s = {ratio:.2f}x")
        if "memory_bandwidth_fraction" in pair.get("gptjax", {}):
            g = pair["gptjax"]
            print(f"batch {batch}: gptjax reads {g['weight_bytes'] / 1e6:.0f} MB of weights a token, "
                  f"{g['memory_bandwidth_fraction']:.0%} of the measured copy bandwidth "
                  f"({g['copy_bandwidth_bytes_per_sec'] / 1e9:.1f} GB/s)")


if __name__ == "__main__":
    main()
