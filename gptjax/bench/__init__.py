"""Benchmark and plan tooling, apart from the library: timing (timing), FLOPs (flops), records and
`compare` (records, chart), the train/eval step benchmark (train_step), decoding (decoding), and plan
mode (plan: the run's programs compiled for a target, targets: the TPUs and GPUs it knows,
compiled: what a compiled program needs). Nothing in training, evaluation or prediction imports it.

    python -m gptjax.bench compare RECORDS... --out PNG
    gptjax --config=ner --workdir=/tmp/plan --mode=plan --target=v5e-8
"""
