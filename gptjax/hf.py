"""Hugging Face GPT-2 checkpoints <-> gptjax models, through safetensors (never pickle).

Hugging Face names a parameter `transformer.h.3.attn.c_attn.weight`; gptjax holds the twelve (or
48) blocks stacked, as `transformer/h/attn/c_attn/kernel` with a leading layer axis. The map between
the two is mechanical: rename the leaf, (un)stack `h`, and transpose the `nn.Linear` heads
(`classifier`, `score`), which PyTorch stores (out, in). GPT-2's `Conv1D` weights are already
(in, out), like a Flax kernel.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import jax
import numpy as np
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

from gptjax.errors import CheckpointError
from gptjax.model import GPT2, GPT2Config, make_head
from gptjax.lora import merge_lora

log = logging.getLogger("gptjax")

WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
CONFIG = "config.json"
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json"]
HUB_FILES = [CONFIG, WEIGHTS, WEIGHTS_INDEX, "model-*-of-*.safetensors", *TOKENIZER_FILES]

ARCHITECTURES = {
    "token_classification": "GPT2ForTokenClassification",
    "sequence_classification": "GPT2ForSequenceClassification",
    "causal_lm": "GPT2LMHeadModel",
}
HEAD_MODULE = {"token_classification": "classifier", "sequence_classification": "score"}
_LEAF_TO_HF = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}
# Tensors a GPT-2 checkpoint may hold that gptjax rebuilds or ties instead of loading: the causal
# mask buffers of old checkpoints, and the LM head, which is tied to wte.
_IGNORED = re.compile(r"^(h\.\d+\.attn\.(bias|masked_bias)|lm_head\.weight)$")



def _hf_names(path: tuple[str, ...], n_layer: int) -> list[str]:
    """The Hugging Face names of one gptjax parameter: n_layer names for a stacked block leaf."""
    parts = list(path[:-1]) + [_LEAF_TO_HF[path[-1]]]
    if parts[0] == "transformer" and parts[1] == "h":
        return [".".join(parts[:2] + [str(i)] + parts[2:]) for i in range(n_layer)]
    return [".".join(parts)]


def _is_linear_head(path: tuple[str, ...]) -> bool:
    return path[0] in ("classifier", "score") and path[-1] == "kernel"


def _flat_params(model_or_state) -> dict[tuple[str, ...], object]:
    state = model_or_state if isinstance(model_or_state, nnx.State) else nnx.state(model_or_state, nnx.Param)
    return {tuple(str(k) for k in path): leaf for path, leaf in nnx.traversals.flatten_mapping(nnx.to_pure_dict(state)).items()}


# ---------------------------------------------------------------------------------------------
# Finding the files


def resolve_checkpoint(name_or_path: str, revision: str | None = None, cache_dir: str | None = None) -> Path:
    """A local directory holding config.json and safetensors weights, fetching hub ids if needed.

    Hub ids go through huggingface_hub, which caches them and honours HF_HUB_OFFLINE.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    looks_local = name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1 or path.suffix
    if looks_local or path.exists():
        raise CheckpointError(f"{name_or_path}: no such directory (expected config.json and {WEIGHTS} in it)")
    from huggingface_hub import snapshot_download

    try:
        local = snapshot_download(name_or_path, revision=revision, cache_dir=cache_dir, allow_patterns=HUB_FILES)
    except Exception as e:  # noqa: BLE001 - offline, unknown repo, no network: one message for all
        raise CheckpointError(
            f"{name_or_path}: could not fetch it from the Hugging Face Hub ({type(e).__name__}: {e}). "
            "Offline, point at a local directory with config.json and model.safetensors, or fill the "
            "hub cache first (`hf download REPO_ID`)."
        ) from e
    return Path(local)


def _weight_files(directory: Path) -> list[Path]:
    single = directory / WEIGHTS
    if single.is_file():
        return [single]
    index = directory / WEIGHTS_INDEX
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        missing = [s for s in shards if not (directory / s).is_file()]
        if missing:
            raise CheckpointError(f"{index}: names shards that are not in {directory}: {missing}")
        return [directory / s for s in shards]
    if (directory / "pytorch_model.bin").is_file():
        raise CheckpointError(
            f"{directory}: has only pytorch_model.bin, a pickle, which gptjax does not load (pickles can "
            "run code). Convert it once with transformers: "
            "`AutoModel.from_pretrained(dir).save_pretrained(dir, safe_serialization=True)`."
        )
    raise CheckpointError(f"{directory}: no {WEIGHTS} (or {WEIGHTS_INDEX}) in it")


def _read_tensors(files: list[Path]) -> dict[str, np.ndarray]:
    tensors = {}
    for file in files:
        try:
            with safe_open(str(file), framework="numpy") as f:
                for key in f.keys():
                    # transformers' task models prefix the backbone with "transformer.", GPT2Model does not.
                    tensors[key.removeprefix("transformer.")] = (f.get_tensor(key), file)
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error type for a damaged file
            raise CheckpointError(f"{file}: cannot be read as safetensors ({e}); the file is damaged or "
                                  "truncated") from None
    return tensors


# ---------------------------------------------------------------------------------------------
# Loading


def from_pretrained(
    name_or_path: str,
    head: str = "causal_lm",
    num_labels: int | None = None,
    labels: list[str] | None = None,
    *,
    reinit_head: bool = False,
    seed: int = 0,
    revision: str | None = None,
    cache_dir: str | None = None,
    **config_changes,
) -> GPT2:
    """A GPT-2 from a hub id or a local directory, with `head` on top.

    A head stored in the checkpoint (`classifier`, `score`) is loaded; a missing one is
    initialised (and the log says so), as is a stored one when `reinit_head=True`.
    `config_changes` set gptjax fields such as dtype="bfloat16" or attention="cudnn", or
    dropouts.
    """
    directory = resolve_checkpoint(name_or_path, revision, cache_dir)
    config_file = directory / CONFIG
    if not config_file.is_file():
        raise CheckpointError(f"{directory}: no {CONFIG} in it")
    try:
        hf_config = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{config_file}: not valid JSON ({e})") from None
    if not isinstance(hf_config, dict):
        raise CheckpointError(f"{config_file}: expected a JSON object, found {type(hf_config).__name__}")
    try:
        config = GPT2Config.from_hf_dict(hf_config, source=str(config_file), **config_changes)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{config_file}: {e}") from None
    tensors = _read_tensors(_weight_files(directory))

    head_module = HEAD_MODULE.get(head)
    stored_head = tensors.get(f"{head_module}.weight") if head_module else None
    if stored_head is not None and not reinit_head:
        stored = stored_head[0].shape[0]
        requested = len(labels) if labels is not None else num_labels
        if requested is not None and requested != stored:
            raise CheckpointError(
                f"{stored_head[1]}: the stored {head_module} head has {stored} labels but "
                f"{requested} were requested; pass reinit_head=True to start a new head"
            )
        num_labels = stored
        if labels is None:
            labels = _stored_label_names(hf_config, stored)
    if head_module and (stored_head is None or reinit_head):
        why = "reinit_head=True" if stored_head is not None else "the checkpoint has none"
        log.info("initialising a new %s head (%s labels): %s", head_module, num_labels or len(labels or []), why)

    abstract = nnx.eval_shape(lambda: GPT2(config, head, num_labels, labels, rngs=nnx.Rngs(seed)))
    graphdef, state = nnx.split(abstract)
    values, consumed = {}, set()
    for path, leaf in _flat_params(nnx.state(abstract, nnx.Param)).items():
        if path[0] == head_module and (stored_head is None or reinit_head):
            continue
        names = _hf_names(path, config.n_layer)
        stripped = [n.removeprefix("transformer.") for n in names]
        missing = [n for n in stripped if n not in tensors]
        if missing:
            raise CheckpointError(f"{directory}: the checkpoint lacks {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
        arrays = []
        for n in stripped:
            array, file = tensors[n]
            arrays.append(array.T if _is_linear_head(path) else array)
            expected = tuple(leaf.shape[1:] if path[1:2] == ("h",) else leaf.shape)
            if arrays[-1].shape != expected:
                implied = expected[::-1] if _is_linear_head(path) else expected
                raise CheckpointError(
                    f"{file}: tensor {n} has shape {tuple(array.shape)}, but {config_file} implies {implied}"
                )
            consumed.add(n)
        values[path] = np.stack(arrays) if path[1:2] == ("h",) else arrays[0]
    _check_leftovers(tensors, consumed)

    if head_module and (stored_head is None or reinit_head):
        fresh = make_head(config, head, num_labels or len(labels), nnx.Rngs(seed))
        for path, value in _flat_params(fresh).items():
            values[(head_module, *path)] = np.asarray(value)
    pure = nnx.traversals.unflatten_mapping({p: jax.numpy.asarray(v, dtype=np.float32) for p, v in values.items()})
    nnx.replace_by_pure_dict(state, pure)
    return nnx.merge(graphdef, state)


def _stored_label_names(hf_config: dict, num_labels: int) -> tuple[str, ...] | None:
    """Label names from config.json's id2label, unless they are transformers' LABEL_i defaults."""
    id2label = hf_config.get("id2label") or {}
    names = [id2label.get(str(i), id2label.get(i)) for i in range(num_labels)]
    if None in names or names == [f"LABEL_{i}" for i in range(num_labels)]:
        return None
    return tuple(names)


def _check_leftovers(tensors: dict, consumed: set[str]) -> None:
    left = sorted(k for k in tensors if k not in consumed and not _IGNORED.match(k))
    # A head that is not loaded (another task's, or one being re-initialised) is dropped knowingly.
    unused_heads = [k for k in left if k.split(".")[0] in HEAD_MODULE.values()]
    if unused_heads:
        log.info("not loading the checkpoint's head tensors: %s", ", ".join(unused_heads))
    unexpected = [k for k in left if k not in unused_heads]
    if unexpected:
        file = tensors[unexpected[0]][1]
        raise CheckpointError(
            f"{file}: tensors that a GPT-2 of this config does not have: {unexpected[:5]}"
            + (f" (and {len(unexpected) - 5} more)" if len(unexpected) > 5 else "")
        )


# ---------------------------------------------------------------------------------------------
# Exporting


def to_hf_state_dict(model: GPT2) -> dict[str, np.ndarray]:
    """The model's parameters under Hugging Face's task-model names and layouts, as numpy."""
    model = merge_lora(model)  # adapters folded into their kernels: the export is a plain GPT-2
    out = {}
    n_layer = model.config.n_layer
    for path, value in _flat_params(model).items():
        array = np.asarray(jax.device_get(value), dtype=np.float32)
        if _is_linear_head(path):
            array = array.T
        names = _hf_names(path, n_layer)
        if path[1:2] == ("h",):
            for i, name in enumerate(names):
                out[name] = np.ascontiguousarray(array[i])
        else:
            out[names[0]] = np.ascontiguousarray(array)
    return out


def hf_config_dict(model: GPT2) -> dict:
    """config.json for the model: architecture, head class and label names."""
    cfg = model.config.to_hf_dict()
    cfg["architectures"] = [ARCHITECTURES[model.head]]
    cfg["tie_word_embeddings"] = True
    if model.num_labels:
        names = model.labels or tuple(f"LABEL_{i}" for i in range(model.num_labels))
        cfg["id2label"] = {str(i): name for i, name in enumerate(names)}
        cfg["label2id"] = {name: i for i, name in enumerate(names)}
        cfg["num_labels"] = model.num_labels
    if model.head == "sequence_classification" and cfg["pad_token_id"] is None:
        # transformers' sequence classifier refuses batches without a pad id; GPT-2 pads with EOS.
        cfg["pad_token_id"] = cfg["eos_token_id"]
    return cfg


def save_pretrained(model: GPT2, directory: str | os.PathLike) -> Path:
    """Writes config.json and model.safetensors that transformers' GPT-2 classes load as they are."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # No lm_head.weight: it is tied to wte, and transformers re-ties it on load.
    tensors = to_hf_state_dict(model)
    save_file(tensors, str(directory / WEIGHTS), metadata={"format": "pt"})
    # safetensors creates its file 0600; an export is shared like the config.json beside it.
    umask = os.umask(0o022)
    os.umask(umask)
    os.chmod(directory / WEIGHTS, 0o666 & ~umask)
    (directory / CONFIG).write_text(json.dumps(hf_config_dict(model), indent=2) + "\n", encoding="utf-8")
    return directory
