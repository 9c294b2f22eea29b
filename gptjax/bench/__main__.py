"""python -m gptjax.bench compare RECORDS... [--out PNG] | memory [--size ...]"""

from __future__ import annotations

import argparse

from gptjax.bench import chart, plan


def main(argv=None, prog="python -m gptjax.bench") -> None:
    parser = argparse.ArgumentParser(prog=prog, description="Compare benchmark records; "
                                     "plan a run's memory.")
    commands = parser.add_subparsers(dest="command", required=True)
    compare = commands.add_parser("compare", help="a table (and with --out a PNG chart) across records")
    chart.add_compare_arguments(compare)
    compare.set_defaults(run=chart.compare)
    memory = commands.add_parser("memory", help=plan.__doc__.splitlines()[0], description=plan.__doc__.splitlines()[0])
    plan.add_arguments(memory)
    memory.set_defaults(run=plan.memory)
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
