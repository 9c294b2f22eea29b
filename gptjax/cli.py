"""gptjax's command line: gptjax (or python -m gptjax, or python run.py) --config=NAME --workdir=DIR [--mode=MODE] [--config.KEY=VALUE ...]
                     or: gptjax compare RECORDS... [--out PNG]  (benchmark records: a table, and a chart with --out)

  --config     a named config, gptjax/configs/NAME.py (demo, sequence_demo, ner, sst2, lm_demo, lm), or a path to a config
               file; train and benchmark only
  --workdir    where a run writes run.json (its config, labels and data fingerprint), tokenizer/,
               metrics.jsonl, results.json, report.txt, TensorBoard events, checkpoints/, best/
               and export/ (the kept model as a Hugging Face directory)
  --mode       train (default): train, evaluate on validation each epoch, then on test; the
                 same command on the same workdir resumes from the latest checkpoint
               eval: score the run's --checkpoint (best or latest) on --split (default test) of
                 its data source, or on a labelled file given as --input; metrics JSON to --output
               export: write the run's --checkpoint to --export_dir as a Hugging Face directory
               predict: tag or classify raw text, a sentence or document a line, from --input (or
                 standard input) to --output (or standard output) as JSON Lines
               generate: continue prompts, one a line, with a causal-LM model (a causal_lm run, a
                 GPT2LMHeadModel export or hub id); generate.* keys set the decoding
               benchmark: time the config's train and eval steps on synthetic batches (random
                 weights, no data), or with --benchmark=generate decoding at generate.batch_size,
                 prompt_length and max_new_tokens (benchmarks/generate.py times transformers'
                 generate beside it); writes WORKDIR/benchmark.json, appends records to --results
               plan: compile the train, eval (and decoding) programs for --target, a TPU slice or GPU
                 node that need not be attached (needs gptjax[plan]), and say whether and how they
                 fit; writes WORKDIR/plan.json; exit status 3 when something does not fit
               eval, export, predict, generate take a trained --workdir or an export as --model_dir, need
               no --config and no training data, and write nothing into the run; overrides may
               change only how the model runs (dtype, attention, lengths, eval batch size, mesh)
  --config.a.b=value   override one config key; the value is parsed as the key's type

Several hosts: jax.distributed is started by itself on multi-host TPU VMs and under SLURM, or
with --coordinator_address=HOST:PORT --num_processes=N --process_id=I on each host.
"""

import argparse
import inspect
import logging
import os
import re
import signal
import sys

import gptjax
from gptjax import workdir as wd
from gptjax.config import apply_overrides, base_config, check_platform, load_config, validate
from gptjax.errors import ConfigError, GptjaxError, WorkdirError


READING_MODES = ("eval", "export", "predict", "generate")  # they use a trained run and write nothing into it


def describe_keys() -> str:
    """Every key with its default and meaning, from base_config()'s own lines and comments: the
    text of `gptjax --help-config`."""
    meaning, pending = {}, []
    for line in inspect.getsource(base_config).splitlines():
        line = line.strip()
        if line.startswith("#"):
            pending.append(line.lstrip("# "))  # a comment block says what the next key or section is
            continue
        target = re.match(r"c\.([\w.]+)(?:\[key\])? = [^#]*(?:#\s*(.*))?$", line)
        if target and "[key]" not in line:
            meaning[target.group(1)] = " ".join([*pending, target.group(2) or ""]).strip()
        pending = []
    rows = []

    def walk(node, prefix=""):
        for key, value in node.items():
            name = prefix + key
            if hasattr(value, "items"):  # a section
                if meaning.get(name):
                    rows.append((f"{name}.*", "", meaning[name]))
                walk(value, name + ".")
            else:
                rows.append((name, repr(value), meaning.get(name, "")))

    walk(base_config())
    left = [f"{k} = {d}" if d else k for k, d, _ in rows]
    width = min(max(map(len, left)), 44) + 2
    return "\n".join(f"{text:<{width}}{m}".rstrip() for text, (_, _, m) in zip(left, rows))


class _HelpConfig(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        print(f"Every config key, its default and its meaning (set one with --config.KEY=VALUE):\n\n{describe_keys()}")
        parser.exit()


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        """A usage error in one line (argparse prints the whole usage first)."""
        self.exit(2, f"{self.prog}: error: {message} (--help lists the flags)\n")


def parse_args(argv):
    parser = _Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config")
    parser.add_argument("--workdir")
    parser.add_argument("--version", action="version", version=f"gptjax {gptjax.__version__}")
    parser.add_argument("--help-config", action=_HelpConfig, nargs=0, help="list every config key with its default "
                                                                             "and meaning, and exit")
    parser.add_argument("--mode", default="train", choices=("train", "eval", "export", "benchmark", "predict", "generate", "plan"))
    parser.add_argument("--benchmark", default="train", choices=("train", "generate"),
                        help="benchmark: the train and eval steps, or decoding (generate.* shapes)")
    parser.add_argument("--target", help="plan: the TPU slice or GPU node to compile for (e.g. v5e-8, h100x8); "
                                         "--target=list names them all")
    parser.add_argument("--split", default="test", choices=("train", "validation", "test"))
    parser.add_argument("--export_dir")
    parser.add_argument("--checkpoint", default="best", choices=("best", "latest"))
    parser.add_argument("--results", help="benchmark: a JSONL file to append the record to")
    parser.add_argument("--benchmark_steps", type=int, default=10, help="benchmark: timed steps")
    parser.add_argument("--benchmark_warmup", type=int, default=2, help="benchmark: untimed steps after compiling")
    parser.add_argument("--coordinator_address", help="several hosts: HOST:PORT of process 0")
    parser.add_argument("--num_processes", type=int)
    parser.add_argument("--process_id", type=int)
    parser.add_argument("--input", help="predict, generate: a text file, one sentence, document or prompt a line "
                                        "(default: standard input); eval: a labelled file to score instead of --split")
    parser.add_argument("--output", help="predict, generate: where the JSON Lines go (default: standard output); "
                                         "eval: a JSON file for the metrics")
    parser.add_argument("--model_dir", help="eval, export, predict, generate: an exported Hugging Face directory (or, "
                                            "for generate, a hub id) instead of a workdir")
    parser.add_argument("--start_over", action="store_true",
                        help="train: move the workdir's run aside into WORKDIR/previous/TIME/ (nothing is deleted) "
                             "and train a new one there")
    parser.add_argument("--overwrite", action="store_true",
                        help="export: write into a non-empty directory that is not an earlier export (its files of "
                             "other names stay)")
    args, rest = parser.parse_known_args(argv)
    if args.mode in READING_MODES:
        if not (args.workdir or args.model_dir):
            parser.error(f"--mode={args.mode} needs --workdir (a trained run) or --model_dir (an export)")
    else:
        for flag in ("config", "workdir"):
            if getattr(args, flag) is None:
                parser.error(f"--{flag} is required for --mode={args.mode}")
    if args.mode == "plan" and not args.target:
        parser.error("--mode=plan needs --target (e.g. --target=v5e-8; --target=list names them all)")
    if args.start_over and args.mode != "train":
        parser.error(f"--start_over is for --mode=train (it moves a run aside to train a new one); --mode={args.mode} "
                     "leaves the workdir as it is")
    if args.benchmark_steps < 1 or args.benchmark_warmup < 0:
        parser.error(f"--benchmark_steps={args.benchmark_steps} --benchmark_warmup={args.benchmark_warmup}: "
                     "at least 1 timed step (the figures are their medians), and no negative warm-up")
    return args, config_overrides(rest, parser)


def config_overrides(rest: list[str], parser: argparse.ArgumentParser) -> dict[str, str]:
    """The --config.KEY=VALUE arguments parse_known_args left over, as {KEY: VALUE}; anything else
    is a usage error. The command line's and the benchmark scripts' one reading of them."""
    overrides = {}
    for item in rest:
        if not item.startswith("--config.") or "=" not in item:
            parser.error(f"unrecognised argument {item!r} (overrides are written --config.KEY=VALUE)")
        key, value = item[len("--config."):].split("=", 1)
        overrides[key] = value
    return overrides


def _no_background_tracebacks(record: logging.LogRecord) -> bool:
    """Drops Orbax's log of a failed background write (a page of traceback): the failure is
    raised at the next save or wait, and reported there in one line."""
    return not (record.exc_info and "orbax" in record.pathname)


def _no_closed_loop_tracebacks(unraisable, print_it=sys.unraisablehook):
    """TensorStore's reads and writes still in flight when Orbax gives up on a damaged checkpoint
    or a full disk call back into Orbax's closed event loop, and each failure reaches
    sys.unraisablehook: pages of one RuntimeError after the one-line error that matters."""
    if not (unraisable.exc_type is RuntimeError and str(unraisable.exc_value) == "Event loop is closed"):
        print_it(unraisable)


INTERRUPTED_EXIT_CODE = 130  # the shell's code for a command stopped by Ctrl-C


def _compare(argv) -> bool:
    """`gptjax compare RECORDS... [--out PNG]`: the benchmark records' table (and chart), no JAX device needed."""
    if not argv or argv[0] != "compare":
        return False
    from gptjax.bench.__main__ import main as bench

    bench(argv, prog="gptjax")
    return True


def accelerator_attached() -> bool:
    """Whether the machine shows an NVIDIA GPU, a TPU or an AMD GPU to its processes."""
    import glob

    return any(glob.glob(pattern) for pattern in ("/dev/nvidia[0-9]*", "/dev/accel*", "/dev/vfio/[0-9]*", "/dev/kfd"))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if _compare(argv):
        return
    args, overrides = parse_args(argv)
    if not accelerator_attached():
        # JAX would pick the CPU anyway, but first start every plugin installed (gptjax[plan]'s CUDA
        # plugin and libtpu), which fail here with a page of tracebacks.
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    if args.mode == "plan":
        # The target's compiler runs on this host; without this the CUDA plugin would try to start
        # a GPU here, and libtpu a TPU.
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # plans beside a running job or plan
        # Off a TPU VM, libtpu warns that it cannot find the VM's own TPU; the topology compiled
        # for is given apart, so these only quiet it.
        os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
        os.environ.setdefault("TPU_ACCELERATOR_TYPE", args.target.lower().replace("v5e-", "v5litepod-"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("absl", "jax", "httpx", "datasets", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("absl").addFilter(_no_background_tracebacks)
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)  # the same failure again, from Orbax's event loops
    sys.unraisablehook = _no_closed_loop_tracebacks
    # SIGTERM as Ctrl-C: whatever is half written is removed on the way out (workdir.stop).
    # Training's loop turns both into a checkpoint and a clean stop of its own (checkpoint.py).
    previous = {sig: signal.signal(sig, wd.stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        _main(args, overrides)
    except KeyboardInterrupt as e:
        print(f"error: stopped by {e.args[0] if e.args else 'SIGINT'} before the work was done; no partial output "
              "was kept", file=sys.stderr)
        sys.exit(INTERRUPTED_EXIT_CODE)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _main(args, overrides):
    config = None
    try:
        if args.mode in READING_MODES:
            if args.config:
                logging.getLogger("gptjax").info("--config=%s not read: a trained run brings its own config", args.config)
        else:
            config = validate(apply_overrides(load_config(args.config), overrides))
    except ConfigError as e:
        sys.exit(f"error: {e}")

    from gptjax import sharding

    # Before anything touches a device: on several hosts every process must join first.
    sharding.maybe_initialize_distributed(args.coordinator_address, args.num_processes, args.process_id)
    import jax

    if jax.process_count() > 1:
        for handler in logging.getLogger().handlers:
            handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s [process {jax.process_index()}] %(message)s", "%H:%M:%S"))
    from gptjax import artifact, evaluate, predict
    from gptjax.checkpoint import Preempted
    from gptjax.train import train_and_evaluate

    source = args.model_dir or args.workdir
    try:
        if config is not None:
            check_platform(config)
        if args.mode in ("predict", "generate", "eval"):
            if args.input and not os.path.isfile(args.input):
                raise WorkdirError(f"--input={args.input}: no such file")
            wd.check_output(args.output, reads=(source, args.input))  # before the model is loaded
        if args.mode == "train":
            train_and_evaluate(config, args.workdir, start_over=args.start_over)
        elif args.mode == "benchmark":
            if args.benchmark == "generate":
                from gptjax.bench.decoding import run_generate as run
            else:
                from gptjax.bench.train_step import run
            run(config, args.workdir, config_name=args.config, results=args.results, steps=args.benchmark_steps,
                warmup=args.benchmark_warmup)
        elif args.mode == "plan":
            from gptjax.bench import plan

            status = plan.run(config, args.workdir, args.target, config_name=args.config, results=args.results)
            if status:
                sys.exit(status)
        elif args.mode == "eval":
            evaluate.run(source, args.split, args.checkpoint, overrides, args.input, args.output)
        elif args.mode == "export":
            artifact.export_trained(source, args.export_dir, args.checkpoint, args.overwrite)
        else:  # predict, generate: a causal LM's prediction is its continuation of each line
            from gptjax.text_generation import TextGenerator

            trained = artifact.load(source, args.checkpoint, overrides)
            generates = args.mode == "generate" or trained.task.prediction is None
            predictor = TextGenerator(trained) if generates else predict.Predictor(trained)
            predict.run(predictor, args.input, args.output, reads=(source,))
    except Preempted as e:
        print(e.message, file=sys.stderr)
        raise
    except GptjaxError as e:
        sys.exit(f"error: {e}")
    except OSError as e:  # a path, a permission, a full disk: one line, not a traceback
        sys.exit(f"error: {e.filename + ': ' if e.filename else ''}{e.strerror or e}")
    finally:
        if jax.process_count() > 1:
            # Every process leaves together: one that exits first takes the coordination service
            # (process 0) or a peer with it, and the others abort.
            jax.distributed.shutdown()


def check_early(args, overrides) -> None:
    """What refuses a command without JAX, so before the restart: a config key that does not exist
    or does not parse (in a reading mode, checked against the keys every run has: the trained
    run's own config is read later), a training config that fails validation, and a workdir whose
    lock another run holds."""
    if args.mode in READING_MODES:
        apply_overrides(base_config(), overrides)
        return
    config = validate(apply_overrides(load_config(args.config), overrides))
    if args.mode == "train":
        from gptjax import trackers

        trackers.check(config)
        wd.check_unlocked(wd.path(args.workdir))


def command():
    """The command line as a user runs it (the `gptjax` console command, python -m gptjax, run.py):
    on a CPU, first restarted under glibc settings that XLA:CPU needs (gptjax/malloc.py). Flags,
    --help and a training config's errors are answered before that restart, and before JAX."""
    from gptjax import malloc

    if _compare(sys.argv[1:]):
        return
    args, overrides = parse_args(sys.argv[1:])
    try:
        check_early(args, overrides)
    except (ConfigError, WorkdirError) as e:
        sys.exit(f"error: {e}")
    malloc.restart_tuned()
    main()


if __name__ == "__main__":
    command()
