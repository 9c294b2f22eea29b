"""Benchmark tooling, apart from the library: timing (timing), FLOPs and peaks (flops), records
and `compare` (records), the train/eval step benchmark (train_step), decoding (decoding) and the
memory planner (plan). Nothing in training, evaluation or prediction imports it.

    python -m gptjax.bench compare RECORDS... --out PNG
    python -m gptjax.bench memory --size gpt2-xl --batch 16 --length 512 --mesh data=1,fsdp=8,tensor=1
"""
