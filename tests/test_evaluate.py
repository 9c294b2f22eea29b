"""gptjax/evaluate.py: the on-device evaluation loop, and the completions hook a causal LM's
exact match goes through."""

import math

import numpy as np
import pytest

from gptjax import evaluate, sharding, tasks
from gptjax.data import batching, encode
from gptjax.data.examples import TextExample
from gptjax.metrics import CausalLMEvaluator
from test_tasks import DOCUMENTS, lm_config, lm_tokenizer, tiny_lm


@pytest.fixture(scope="module")
def tok():
    return lm_tokenizer()


def test_perplexity_is_the_token_weighted_mean_nll(tok):
    from gptjax.steps import build_steps

    config = lm_config()
    encoded = encode.pack_documents([TextExample(d) for d in DOCUMENTS[:9]], tok, 16)
    model = tiny_lm(tok)
    # Direct: every block alone, log-softmax in float64, the NLL of each label, one mean over all.
    nll = []
    for ids, labels in zip(encoded.input_ids, encoded.labels):
        logits = np.asarray(model(ids[None]), np.float64)[0]
        logits -= logits.max(-1, keepdims=True)
        log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        nll += (-log_probs[np.arange(len(labels)), labels]).tolist()
    steps = build_steps(config, model, sharding.make_mesh(config.mesh))
    metrics = evaluate.evaluate_encoded(tasks.CAUSAL_LM, encoded, [], steps, config, tok)
    batches = batching.epoch_batches(encoded, 2, buckets=batching.buckets_for(config.data), pad_id=tok.eos_token_id)
    assert any((b["example_index"] < 0).any() for b in batches)  # a padding row, which must not count
    assert metrics["tokens"] == len(nll) == sum(map(len, encoded.labels))
    assert metrics["loss"] == pytest.approx(np.mean(nll), rel=1e-5)
    assert metrics["perplexity"] == pytest.approx(math.exp(np.mean(nll)), rel=1e-5)
    assert math.log(len(tok)) - 0.5 < metrics["loss"] < math.log(len(tok)) + 0.5  # untrained: about uniform


def test_exact_match_through_a_completions_hook():
    pairs = [("a", " b"), ("c", " d"), ("e", " f"), ("g", " h")]

    def nll_fn(batch):  # 2 tokens of NLL 1.0 a row
        return np.full(len(batch["example_index"]), 2.0), np.full(len(batch["example_index"]), 2)

    asked = []

    def completions_fn(prompts):
        asked.extend(prompts)
        return ["b", " x", " f\n", "h "]  # surrounding whitespace does not count

    batches = [{"example_index": np.array([0, 1])}, {"example_index": np.array([2, 3])}]
    metrics = CausalLMEvaluator(4, pairs, completions_fn).run(nll_fn, batches)
    assert asked == ["a", "c", "e", "g"]
    assert metrics["exact_match"] == 0.75 and metrics["loss"] == 1.0 and metrics["tokens"] == 8
    assert "exact_match" not in CausalLMEvaluator(4, pairs).run(nll_fn, batches)  # no hook: left out
    with pytest.raises(ValueError, match="more than once"):
        CausalLMEvaluator(4).run(nll_fn, batches + batches[:1])
