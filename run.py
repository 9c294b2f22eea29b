"""python run.py --config=NAME --workdir=DIR [--mode=MODE] [--config.KEY=VALUE ...]

A checkout's entry point; installed, the same command is `gptjax` or `python -m gptjax`.
"""

from gptjax.cli import command, main  # noqa: F401 - main(argv) runs a command in this process

if __name__ == "__main__":
    command()
