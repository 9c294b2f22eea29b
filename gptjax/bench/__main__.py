"""python -m gptjax.bench compare RECORDS... [--out PNG]"""

from __future__ import annotations

import argparse

from gptjax.bench import chart


def main(argv=None, prog="python -m gptjax.bench") -> None:
    parser = argparse.ArgumentParser(prog=prog, description="Compare benchmark records.")
    commands = parser.add_subparsers(dest="command", required=True)
    compare = commands.add_parser("compare", help="a table (and with --out a PNG chart) across records")
    chart.add_compare_arguments(compare)
    compare.set_defaults(run=chart.compare)
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
