"""Forward-pass throughput of a gpt2-size token classifier: gptjax (jit) beside transformers' PyTorch.

    python benchmarks/forward.py [--size gpt2] [--batch 8] [--length 128] [--steps 10]

Both run on the same random batch on this machine's CPU, interleaved round by round, so that
machine noise hits both alike; it prints medians and their ratio. A figure, not a test.
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers
from flax import nnx

from gptjax.model import SIZES, init_model


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="gpt2", choices=sorted(SIZES))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()

    ids = np.random.RandomState(0).randint(0, 50257, (args.batch, args.length))
    mask = np.ones_like(ids)

    model = init_model(args.size, "token_classification", num_labels=9)
    graphdef, params = nnx.split(model)
    forward = jax.jit(lambda p, i, m: nnx.merge(graphdef, p)(i, m))
    jids, jmask = jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32)
    start = time.perf_counter()
    forward(params, jids, jmask).block_until_ready()
    compile_s = time.perf_counter() - start

    torch.manual_seed(0)
    reference = transformers.GPT2ForTokenClassification(
        transformers.GPT2Config(**SIZES[args.size], num_labels=9)
    ).eval()
    tids, tmask = torch.tensor(ids), torch.tensor(mask)
    with torch.no_grad():
        reference(input_ids=tids, attention_mask=tmask)  # warm-up

    jax_times, torch_times = [], []
    for _ in range(args.steps):
        start = time.perf_counter()
        forward(params, jids, jmask).block_until_ready()
        jax_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        with torch.no_grad():
            reference(input_ids=tids, attention_mask=tmask)
        torch_times.append(time.perf_counter() - start)

    tokens = args.batch * args.length
    j, t = statistics.median(jax_times), statistics.median(torch_times)
    print(f"{args.size} forward, batch {args.batch} x {args.length}, float32, {jax.devices()[0].device_kind}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"gptjax  : median {j * 1e3:8.1f} ms  {tokens / j:9.0f} tokens/s  "
          f"(min {min(jax_times) * 1e3:.1f}, max {max(jax_times) * 1e3:.1f}; compile {compile_s:.1f} s)")
    print(f"pytorch : median {t * 1e3:8.1f} ms  {tokens / t:9.0f} tokens/s  "
          f"(min {min(torch_times) * 1e3:.1f}, max {max(torch_times) * 1e3:.1f})")
    print(f"gptjax / pytorch tokens/s: {t / j:.2f}x")


if __name__ == "__main__":
    main()
