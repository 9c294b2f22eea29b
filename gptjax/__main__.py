"""python -m gptjax: the same command line as run.py and the `gptjax` console command."""

from gptjax.cli import command

command()
