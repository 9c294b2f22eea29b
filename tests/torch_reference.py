"""transformers' PyTorch GPT-2 outputs that the parity tests hold gptjax to, computed or read back.

A reference is a Hugging Face checkpoint directory (config.json, model.safetensors) with the
reference's inputs and outputs beside it in outputs.npz. With torch installed the tests compute
them on the spot. CI's second tier runs on the newest JAX (Python >= 3.12), where no CPU torch is
installed: there the first tier writes every reference once,

    python tests/torch_reference.py DIR

and GPTJAX_TORCH_REFERENCE=DIR makes the tests read them instead. The comparison itself always
runs: only the PyTorch side is carried over.
"""

import os
import sys
from pathlib import Path

import numpy as np

ENV = "GPTJAX_TORCH_REFERENCE"
HF_CLASSES = {  # by name: looking the classes up needs torch
    "token_classification": "GPT2ForTokenClassification",
    "sequence_classification": "GPT2ForSequenceClassification",
    "causal_lm": "GPT2LMHeadModel",
}


def tiny_hf_config(**changes):
    import transformers

    values = dict(
        n_layer=2, n_embd=32, n_head=4, vocab_size=101, n_positions=40, num_labels=5,
        pad_token_id=0, bos_token_id=100, eos_token_id=100, activation_function="gelu_new",
    )
    return transformers.GPT2Config(**{**values, **changes})


def save_reference(head, directory, seed=0, **changes):
    """A random transformers model of `head`, saved to `directory`; returns the PyTorch model."""
    import torch
    import transformers

    torch.manual_seed(seed)
    model = getattr(transformers, HF_CLASSES[head])(tiny_hf_config(**changes)).eval()
    model.save_pretrained(directory)
    return model


def padded_batch(seed=0):
    rng = np.random.RandomState(seed)
    ids = rng.randint(1, 100, (4, 13)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[1, 9:] = 0
    mask[2, 4:] = 0
    mask[3, 1:] = 0
    return ids * mask, mask  # right padding with pad id 0


def torch_logits(model, ids, mask):
    import torch

    return model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits


def _logits(head, directory):
    import torch

    model = save_reference(head, directory)
    ids, mask = padded_batch()
    with torch.no_grad():
        return {"ids": ids, "mask": mask, "logits": torch_logits(model, ids, mask).numpy()}


def _gradients(head, directory):
    """d/dθ of sum(logits * probe * weights), weights masking padded positions: every parameter's gradient."""
    import torch

    model = save_reference(head, directory, seed=1)
    ids, mask = padded_batch(seed=1)
    probe = np.random.RandomState(2).randn(*torch_logits(model, ids, mask).shape).astype(np.float32)
    weights = mask[..., None].astype(np.float32) if probe.ndim == 3 else np.ones((len(ids), 1), np.float32)
    (torch_logits(model, ids, mask) * torch.tensor(probe * weights)).sum().backward()
    if head == "causal_lm":  # lm_head is tied to wte: its gradient is wte's, which the test checks
        lm = model.lm_head.weight.grad
        assert lm is None or lm.data_ptr() == model.transformer.wte.weight.grad.data_ptr()
    grads = {"grad:" + name.removeprefix("transformer."): p.grad.numpy() for name, p in model.named_parameters()
             if name != "lm_head.weight"}
    return {"ids": ids, "mask": mask, "probe": probe, "weights": weights, **grads}


def _gpt2model(directory):
    """A bare GPT2Model checkpoint (no "transformer." prefix): its hidden states times wte, as tied logits."""
    import torch
    import transformers

    torch.manual_seed(0)
    base = transformers.GPT2Model(tiny_hf_config()).eval()
    base.save_pretrained(directory)
    ids, mask = padded_batch()
    with torch.no_grad():
        hidden = base(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state
    return {"ids": ids, "mask": mask, "logits": hidden.numpy() @ base.wte.weight.detach().numpy().T}


BUILDERS = {
    **{f"logits-{head}": (lambda d, h=head: _logits(h, d)) for head in HF_CLASSES},
    **{f"gradients-{head}": (lambda d, h=head: _gradients(h, d)) for head in HF_CLASSES},
    "gpt2model": _gpt2model,
}


def write(name: str, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    np.savez(directory / "outputs.npz", **BUILDERS[name](directory))


def load(name: str, cache: Path) -> tuple[Path, dict]:
    """The reference's checkpoint directory and arrays: from $GPTJAX_TORCH_REFERENCE, or computed into `cache`."""
    stored = os.environ.get(ENV)
    if stored:
        directory = Path(stored) / name
        if not (directory / "outputs.npz").is_file():
            raise FileNotFoundError(f"{ENV}={stored} has no reference {name!r}: write them with "
                                    f"`python tests/torch_reference.py {stored}` where torch is installed")
    else:
        directory = cache / name
        if not directory.exists():
            try:
                import torch  # noqa: F401
            except ImportError:
                raise RuntimeError(f"torch is not installed: install it, or set {ENV} to a directory that "
                                   "`python tests/torch_reference.py DIR` wrote where it is") from None
            write(name, directory)
    with np.load(directory / "outputs.npz") as arrays:
        return directory, dict(arrays)


if __name__ == "__main__":
    import transformers

    transformers.utils.logging.disable_progress_bar()  # a bar a checkpoint saved
    root = Path(sys.argv[1])
    for name in BUILDERS:
        write(name, root / name)
    print(f"{len(BUILDERS)} references in {root}")
