"""The memory plan against XLA's own memory analysis of the compiled train step."""

import pytest

from gptjax.bench.__main__ import main
from gptjax.bench.plan import plan, xla_memory
from gptjax.model import GPT2Config

SMALL = GPT2Config(n_layer=4, n_embd=256, n_head=4, vocab_size=2000, n_positions=128)
ONE = {"data": 1, "fsdp": 1, "tensor": 1}


@pytest.mark.parametrize("remat", [False, True])
def test_plan_agrees_with_xla(remat):
    config = SMALL.replace(remat=remat)
    ours = plan(config, head="token_classification", num_labels=9, batch=8, length=128, mesh_sizes=ONE)
    xla = xla_memory(config, head="token_classification", num_labels=9, batch=8, length=128)
    batch_bytes = 3 * 8 * 128 * 4
    # The state XLA takes as arguments is exactly parameters + optimizer state (+ the batch).
    assert abs(xla["arguments"] - batch_bytes - ours["params"] - ours["optimizer"]) < 0.01 * xla["arguments"]
    # What it allocates besides is gradients, the update and the activations. XLA:CPU keeps more
    # intermediates than the formula counts (fp32 GELU pieces, fusion copies): within a factor of 2.
    temporaries = ours["gradients"] + ours["update"] + ours["activations"]
    assert 0.5 < temporaries / xla["temporaries"] < 1.5, (temporaries, xla)


def test_sharding_divides_the_state():
    whole = plan(SMALL, head="token_classification", num_labels=9, batch=8, length=128, mesh_sizes=ONE)
    fsdp = plan(SMALL, head="token_classification", num_labels=9, batch=8, length=128,
                mesh_sizes={"data": 1, "fsdp": 8, "tensor": 1})
    assert fsdp["params"] < whole["params"] / 7  # all but LayerNorms and the head split 8 ways
    assert fsdp["activations"] < whole["activations"] / 7  # and the rows


def test_command_prints_the_plan(capsys):
    main(["memory", "--size", "gpt2-xl", "--batch", "16", "--length", "512", "--mesh", "data=1,fsdp=8,tensor=1",
          "--remat"])
    out = capsys.readouterr().out
    assert "gpt2-xl" in out and "optimizer" in out and "total" in out
