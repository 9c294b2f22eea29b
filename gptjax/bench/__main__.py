"""python -m gptjax.bench compare RECORDS... [--out PNG] | memory [--size ...]"""

from __future__ import annotations

import argparse

from gptjax.bench import plan, records


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gptjax.bench", description="Compare benchmark records; "
                                     "plan a run's memory.")
    commands = parser.add_subparsers(dest="command", required=True)
    compare = commands.add_parser("compare", help="a table (and a PNG chart) across records")
    records.add_compare_arguments(compare)
    compare.set_defaults(run=records.compare)
    memory = commands.add_parser("memory", help=plan.__doc__.splitlines()[0], description=plan.__doc__.splitlines()[0])
    plan.add_arguments(memory)
    memory.set_defaults(run=plan.memory)
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
