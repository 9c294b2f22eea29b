"""python run.py --config=NAME --workdir=DIR [--mode=MODE] [--config.KEY=VALUE ...]

A checkout's entry point; installed, the same command is `gptjax` or `python -m gptjax`.
"""

from gptjax.cli import main

if __name__ == "__main__":
    main()
