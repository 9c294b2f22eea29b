"""Decoding: prompts in, completions out, through a KV cache, one compiled program per shape bucket.

    import gptjax
    out = gptjax.generate(model, tokenizer, ["The capital of France is"], max_new_tokens=16)
    out[0].completion, out[0].completion_ids, out[0].finish_reason   # "eos", "stop" or "length"

How it runs. Prompts are padded on the left to a prompt-length bucket P, so that every row's next
token goes to the same cache column (one dynamic_update_slice for the batch) and the last prompt
position is the same for all rows. GPT-2's positions are absolute, so each row's positions are its
own count of real tokens, as transformers derives them from the attention mask. One jitted function
runs the prefill (every prompt token at once; the vocabulary projection for the last position
only), then a lax.while_loop of decode steps over a preallocated cache, per layer k and v of
[B, H, P + N, Dh] updated in place (model.Decoder), that ends as soon as every row has finished
(EOS, a stop string, or its token budget). Nothing comes back to the host until the loop ends.

Buckets. The program's shapes are (batch, P, N), each rounded up to a bucket (powers of two by
default). Everything else is an argument: each row's token budget, temperature, top-k, top-p and
seed, the EOS id and the stop strings. A stream of mixed requests therefore compiles once per
bucket; `compilations()` counts the programs built.

Sampling. Temperature 0 (the default) is greedy. Otherwise logits / temperature, then top-k, then
top-p (transformers' order), then a categorical draw. Row r's key at step t is
fold_in(key(seed_r), t): it depends on the row's seed and the step only, never on the batch, so a
prompt samples the same completion whatever shares its batch. Identical prompts with one seed
give identical samples; pass a seed per prompt (seed=[0, 1, 2]) for different ones.

Stop strings. In the loop, a row stops when it samples a token whose text contains a stop string,
or when its last tokens are a stop string's own tokenization. The host then cuts the text before
the first stop string wherever it is, so the text is exact even when a stop string straddles
tokens some other way (the loop then runs on to EOS or the budget: correct, only slower).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gptjax import sharding
from gptjax.model import GPT2, Decoder
from gptjax.sharding import constrain

EOS, STOP, LENGTH = 0, 1, 2
REASONS = ("eos", "stop", "length")
# Stop strings checked in the loop, by their tokenization: at most this many, of at most this many
# tokens (fixed, so that changing the stop strings never recompiles). Longer or further ones are
# still cut exactly on the host, only without the early exit.
MAX_STOP_SEQS, MAX_STOP_LEN = 8, 16


def _powers_of_two(lo: int, hi: int) -> tuple[int, ...]:
    return tuple(2**i for i in range(lo.bit_length() - 1, hi.bit_length()))


@dataclasses.dataclass(frozen=True)
class Buckets:
    """The sizes programs are compiled for: a request is padded up to the smallest that fits
    (beyond the largest, to a multiple of it). The batch bucket is also rounded up to a multiple of
    the devices the batch is split over."""

    batch: tuple[int, ...] = _powers_of_two(1, 64)
    prompt: tuple[int, ...] = _powers_of_two(16, 1024)
    new_tokens: tuple[int, ...] = _powers_of_two(16, 1024)


def bucket(size: int, sizes: Sequence[int], multiple: int = 1) -> int:
    fits = [s for s in sorted(sizes) if s >= size]
    out = fits[0] if fits else -(-size // max(sizes)) * max(sizes)
    return -(-out // multiple) * multiple


@dataclasses.dataclass
class Completion:
    """One prompt's result. completion_ids never hold the EOS token. For finish_reason "stop",
    `completion` ends before the stop string, while completion_ids end with the token that
    completed it (what the model generated). Text fields are None from generate_ids."""

    prompt: str | None
    completion: str | None
    completion_ids: list[int]
    finish_reason: str  # "eos", "stop" or "length"
    truncated: bool = False  # the prompt's start was dropped to fit n_positions (generate(truncate=True))


# ---------------------------------------------------------------------------------------------
# On the device


_TRACES = [0]


def compilations() -> int:
    """How many decoding programs have been built in this process (one per new bucket, model or mesh)."""
    return _TRACES[0]


def _filter_top_k_top_p(x, top_k, top_p):
    """x [B, V] with the logits outside each row's top-k, then outside its top-p nucleus, at -inf.

    top_k 0 or top_p 1 turn a filter off. One sort serves both: top-k is a threshold on the
    sorted logits, and top-p keeps the tokens whose higher-ranked mass is below top_p (the first
    always), within the top k, as transformers' warpers do one after the other.
    """
    v = x.shape[-1]
    rank = jnp.arange(v)[None]
    k = jnp.where(top_k > 0, jnp.minimum(top_k, v), v)[:, None]
    desc = jnp.where(rank < k, jnp.flip(jnp.sort(x, axis=-1), axis=-1), -jnp.inf)
    probs = jax.nn.softmax(desc, axis=-1)
    above = jnp.cumsum(probs, axis=-1) - probs  # the mass ranked above each token
    keep = (rank < k) & ((top_p[:, None] >= 1.0) | (above < top_p[:, None]))
    n = jnp.maximum(jnp.sum(keep, axis=-1), 1)
    threshold = jnp.take_along_axis(desc, (n - 1)[:, None], axis=-1)
    return jnp.where(x >= threshold, x, -jnp.inf)


def _argmax(logits):
    """jnp.argmax over the last axis (the first of equal maxima), as a max and a min: XLA:CPU runs
    argmax's paired reduction several times slower than two plain ones (benchmarks/README.md)."""
    v = logits.shape[-1]
    first = jnp.min(jnp.where(logits == jnp.max(logits, axis=-1, keepdims=True), jnp.arange(v), v), axis=-1)
    return jnp.minimum(first, v - 1).astype(jnp.int32)  # all-NaN logits give no maximum: the last token


def _pick(logits, keys, temperature, top_k, top_p):
    """The next token of each row [B]: argmax where temperature is 0, else a draw. The sampling
    work (and the sort of the filters) runs only when some row needs it."""
    greedy = _argmax(logits)

    def sample():
        x = logits / jnp.where(temperature > 0, temperature, 1.0)[:, None]
        filtered = jnp.any((top_k > 0) | (top_p < 1.0))
        x = jax.lax.cond(filtered, lambda: _filter_top_k_top_p(x, top_k, top_p), lambda: x)
        # A categorical draw as jax.random.categorical makes it (Gumbel-max), through the faster argmax.
        drawn = _argmax(x + jax.vmap(lambda k: jax.random.gumbel(k, x.shape[-1:]))(keys))
        return jnp.where(temperature > 0, drawn, greedy)

    return jax.lax.cond(jnp.any(temperature > 0), sample, lambda: greedy)


def _ends_with(recent, seqs):
    """[B]: whether a row's last tokens `recent` [B, L] end with one of `seqs` [S, L] (each
    right-aligned, -1 on the left; a row of -1s is unused)."""
    used = jnp.any(seqs >= 0, axis=-1)
    match = jnp.all((seqs[None] < 0) | (recent[:, None] == seqs[None]), axis=-1)  # [B, S]
    return jnp.any(match & used[None], axis=-1)


@functools.cache
def _program(graphdef):
    """The jitted decode of one model structure. Looked up once per Generator: hashing a graphdef
    takes milliseconds, too long to do on every call as a static argument of jit."""
    return jax.jit(functools.partial(_decode, graphdef), static_argnames="new_tokens")


def _decode(graphdef, params, prompt_ids, prompt_mask, rows, shared, *, new_tokens):
    """prompt_ids, prompt_mask: [B, P] left-padded. rows: per-row max_new, seed, temperature,
    top_k, top_p, each [B]. shared: eos_id and pad_id (scalars, eos_id -1 for none), stop_table
    [vocab] (tokens whose text contains a stop string), stop_seqs [MAX_STOP_SEQS, MAX_STOP_LEN].
    Returns tokens [B, N], how many each row generated [B] (its EOS or stop token included), and
    why each row finished [B] (EOS, STOP, LENGTH)."""
    _TRACES[0] += 1  # runs when jit traces, that is once per program it builds
    model = nnx.merge(graphdef, params)  # a Decoder
    cfg = model.config
    b, p = prompt_ids.shape
    n = new_tokens
    mask = prompt_mask.astype(bool)
    lengths = jnp.sum(mask, axis=1, dtype=jnp.int32)
    positions = jnp.maximum(jnp.cumsum(mask, axis=1, dtype=jnp.int32) - 1, 0)
    # Decode columns all count as real: a step sees them only up to its own (the causal bound).
    key_mask = jnp.concatenate([mask, jnp.ones((b, n), bool)], axis=1)
    cache = jax.tree.map(lambda c: constrain(c, "batch", None, None), model.init_cache(b, p + n))
    keys = jax.vmap(jax.random.key)(rows["seed"])

    def pick(logits, t):
        step_keys = jax.vmap(jax.random.fold_in, (0, None))(keys, t)
        return _pick(logits, step_keys, rows["temperature"], rows["top_k"], rows["top_p"])

    def record(c, tok, t):
        """Writes step t's tokens of the rows still running; finishes rows on EOS, stop, budget."""
        live = ~c["done"]
        tok = jnp.where(live, tok, shared["pad_id"])
        recent = jnp.concatenate([c["recent"][:, 1:], tok[:, None]], axis=1)
        count = c["count"] + live
        eos = live & (tok == shared["eos_id"])
        stop = live & ~eos & (shared["stop_table"][tok] | _ends_with(recent, shared["stop_seqs"]))
        reason = jnp.where(eos, EOS, jnp.where(stop, STOP, c["reason"]))
        done = c["done"] | eos | stop | (count >= rows["max_new"])
        out = jax.lax.dynamic_update_slice(c["out"], tok[:, None], (0, t))
        return {**c, "tok": tok, "out": out, "count": count, "done": done, "reason": reason, "recent": recent}

    logits, cache = model(prompt_ids, positions, cache, 0, key_mask)
    start = {
        "t": jnp.int32(1), "cache": cache, "tok": jnp.zeros((b,), jnp.int32),
        "out": jnp.full((b, n), shared["pad_id"], jnp.int32), "count": jnp.zeros((b,), jnp.int32),
        "done": rows["max_new"] <= 0, "reason": jnp.full((b,), LENGTH, jnp.int32),
        "recent": jnp.full((b, MAX_STOP_LEN), -2, jnp.int32),
    }
    start = record(start, pick(logits, 0), 0)

    def running(c):
        return (c["t"] < n) & ~jnp.all(c["done"])

    def step(c):
        # Feed step t-1's token: cache column p + t - 1, position (its row's count) lengths + t - 1,
        # clipped so that rows already finished (whose tokens are ignored) never index past wpe.
        t = c["t"]
        pos = jnp.minimum(lengths + t - 1, cfg.n_positions - 1)[:, None]
        logits, cache = model(c["tok"][:, None], pos, c["cache"], p + t - 1, key_mask)
        c = record({**c, "cache": cache}, pick(logits, t), t)
        return {**c, "t": t + 1}

    end = jax.lax.while_loop(running, step, start)
    return end["out"], end["count"], end["reason"]


# ---------------------------------------------------------------------------------------------
# On the host


def _per_row(name, value, n, dtype):
    values = np.asarray(value, dtype=dtype)
    if values.ndim == 0:
        return np.full(n, values, dtype)
    if values.shape != (n,):
        raise ValueError(f"{name}: {values.shape[0] if values.ndim == 1 else values.shape} values for {n} prompts")
    return values


def _stop_seqs(sequences: Sequence[Sequence[int]]) -> np.ndarray:
    out = np.full((MAX_STOP_SEQS, MAX_STOP_LEN), -1, np.int32)
    usable = [list(s) for s in sequences if 0 < len(s) <= MAX_STOP_LEN][:MAX_STOP_SEQS]
    for i, seq in enumerate(usable):
        out[i, MAX_STOP_LEN - len(seq):] = seq
    return out


class Generator:
    """A causal_lm model ready to decode: a Decoder of it on a mesh, a tokenizer, the buckets.

    The compiled programs are kept (jax.jit's cache, keyed by the model's structure and the
    shapes), so later calls in the same buckets do not compile. The batch is split over the mesh's
    data and fsdp axes (sharding.make_mesh() by default: every device, data parallel). LoRA
    adapters are merged into their kernels first (merge_lora): the same outputs, fewer matmuls a
    step. The Decoder holds its own copy of the blocks' parameters (one array per layer), so the
    model can be dropped once the Generator is built.
    """

    def __init__(self, model: GPT2, tokenizer=None, *, mesh=None, batch_size: int = 16,
                 buckets: Buckets = Buckets()):
        from gptjax.lora import merge_lora

        self.tokenizer, self.batch_size, self.buckets = tokenizer, batch_size, buckets
        self.mesh = mesh if mesh is not None else sharding.make_mesh()
        self.config = model.config
        self.graphdef, params = nnx.split(Decoder(merge_lora(model)))
        self.params = jax.device_put(params, sharding.shardings_for(params, self.mesh))
        self._decode = _program(self.graphdef)
        self._stop_tables: dict[tuple[str, ...], np.ndarray] = {}

    @property
    def default_eos(self) -> int | None:
        tok_eos = getattr(self.tokenizer, "eos_token_id", None)
        return tok_eos if tok_eos is not None else self.config.eos_token_id

    # -- token ids -------------------------------------------------------------------------

    def generate_ids(self, prompts: Sequence[Sequence[int]], *, max_new_tokens=64, temperature=0.0, top_k=0,
                     top_p=1.0, seed=0, eos_token_id: int | None | str = "default",
                     stop_sequences: Sequence[Sequence[int]] = (), stop_tokens: np.ndarray | None = None
                     ) -> list[Completion]:
        """Completions of token-id prompts, in order. max_new_tokens, temperature, top_k, top_p and
        seed take one value or one per prompt. eos_token_id: "default" (the tokenizer's, else the
        config's), an id, or None (never stop at EOS). stop_sequences: token sequences that finish a
        row; stop_tokens: a [vocab] bool table of tokens that finish a row."""
        n = len(prompts)
        if not n:
            return []
        eos = self.default_eos if eos_token_id == "default" else eos_token_id
        cfg = self.config
        per_row = {
            "max_new": _per_row("max_new_tokens", max_new_tokens, n, np.int32),
            "seed": _per_row("seed", np.asarray(seed, np.int64) % 2**32, n, np.uint32),
            "temperature": _per_row("temperature", temperature, n, np.float32),
            "top_k": _per_row("top_k", top_k, n, np.int32),
            "top_p": _per_row("top_p", top_p, n, np.float32),
        }
        prompts = [list(map(int, p)) for p in prompts]
        self._check(prompts, per_row)
        table = np.zeros(cfg.vocab_size, bool)
        if stop_tokens is not None:
            table[: len(stop_tokens)] = np.asarray(stop_tokens, bool)[: cfg.vocab_size]
        shared = {"eos_id": np.int32(-1 if eos is None else eos), "pad_id": np.int32(0 if eos is None else eos),
                  "stop_table": table, "stop_seqs": _stop_seqs(stop_sequences)}
        pad = int(shared["pad_id"])
        shared = jax.device_put(shared, sharding.replicated(self.mesh))

        results: list[Completion | None] = [None] * n
        order = sorted(range(n), key=lambda i: len(prompts[i]))  # similar lengths share a batch
        for start in range(0, n, self.batch_size):
            chunk = order[start:start + self.batch_size]
            out, count, reason = self._run_batch([prompts[i] for i in chunk],
                                                 {k: v[chunk] for k, v in per_row.items()}, shared, pad)
            for r, i in enumerate(chunk):
                ids = out[r, : count[r]].tolist()
                if reason[r] == EOS:
                    ids = ids[:-1]
                results[i] = Completion(None, None, ids, REASONS[reason[r]])
        return results

    def _check(self, prompts, per_row):
        cfg = self.config
        for i, p in enumerate(prompts):
            if not p:
                raise ValueError(f"prompt {i} is empty: give at least one token (GPT-2 starts texts with BOS/EOS)")
            if min(p) < 0 or max(p) >= cfg.vocab_size:
                raise ValueError(f"prompt {i}: token ids must be in [0, {cfg.vocab_size})")
            if len(p) + per_row["max_new"][i] > cfg.n_positions:
                raise ValueError(f"prompt {i}: {len(p)} tokens + max_new_tokens={per_row['max_new'][i]} exceed the "
                                 f"model's n_positions={cfg.n_positions}")
        if (per_row["max_new"] < 0).any() or (per_row["temperature"] < 0).any() or (per_row["top_k"] < 0).any():
            raise ValueError("max_new_tokens, temperature and top_k must be >= 0")
        if ((per_row["top_p"] <= 0) | (per_row["top_p"] > 1)).any():
            raise ValueError("top_p must be in (0, 1]")

    def bucket_shapes(self, num_prompts: int, prompt_length: int, max_new_tokens: int) -> tuple[int, int, int]:
        """(batch, prompt length, new tokens) of the program a batch of these sizes runs."""
        devices = math.prod(self.mesh.shape[axis] for axis in sharding.BATCH)
        return (bucket(num_prompts, self.buckets.batch, devices), bucket(prompt_length, self.buckets.prompt),
                bucket(max(max_new_tokens, 1), self.buckets.new_tokens))

    def _run_batch(self, prompts, rows, shared, pad):
        b, p, n = self.bucket_shapes(len(prompts), max(map(len, prompts)), int(rows["max_new"].max()))
        ids = np.full((b, p), pad, np.int32)
        mask = np.zeros((b, p), np.int32)
        mask[len(prompts):, -1] = 1  # filler rows: one token, no budget (finished before they start)
        for r, prompt in enumerate(prompts):
            ids[r, p - len(prompt):] = prompt
            mask[r, p - len(prompt):] = 1
        filler = b - len(prompts)
        full = {k: np.concatenate([v, np.zeros(filler, v.dtype)]) for k, v in rows.items()}
        full["top_p"][len(prompts):] = 1.0
        # Every process holds the whole batch (the same prompts): each places the rows of its devices.
        rows_sharding = sharding.batch_sharding(self.mesh)
        batch = {k: jax.make_array_from_callback(v.shape, rows_sharding, lambda index, v=v: v[index])
                 for k, v in {"ids": ids, "mask": mask, **full}.items()}
        row_args = {k: batch[k] for k in rows}
        with jax.set_mesh(self.mesh):
            out = self._decode(self.params, batch["ids"], batch["mask"], row_args, shared, new_tokens=n)
        return tuple(sharding.to_host(x) for x in out)

    # -- text -------------------------------------------------------------------------------

    def generate(self, prompts: Sequence[str], *, stop: str | Sequence[str] | None = None, truncate: bool = False,
                 **settings) -> list[Completion]:
        """Completions of text prompts, in order; settings as generate_ids. An empty prompt starts
        from the BOS token, as transformers does with no input. `stop`: strings that end a
        completion, which is cut before the first of them. `truncate`: a prompt too long for
        n_positions with its max_new_tokens keeps its last tokens (marked `truncated`) instead of
        being refused."""
        tok = self.tokenizer
        if tok is None:
            raise ValueError("text prompts need a tokenizer; use generate_ids for token ids")
        stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
        if any(not s for s in stops):
            raise ValueError("stop strings must not be empty")
        bos = tok.bos_token_id if tok.bos_token_id is not None else self.config.bos_token_id
        ids = [tok(p)["input_ids"] or [bos] for p in prompts] if prompts else []
        cut = [False] * len(ids)
        if truncate:
            budget = np.broadcast_to(np.asarray(settings.get("max_new_tokens", 64)), (len(ids),))
            for i, n in enumerate(budget):
                keep = max(self.config.n_positions - int(n), 1)
                if len(ids[i]) > keep:
                    ids[i], cut[i] = ids[i][-keep:], True
        if stops:
            settings.setdefault("stop_sequences", [tok(s)["input_ids"] for s in stops])
            settings.setdefault("stop_tokens", self._stop_table(stops))
        results = self.generate_ids(ids, **settings)
        for prompt, result, was_cut in zip(prompts, results, cut):
            result.prompt, result.truncated = prompt, was_cut
            result.completion = self._decode_text(result.completion_ids)
            if stops:
                _cut_at_stop(result, stops, self._decode_text)
        return results

    def _decode_text(self, ids):
        return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def _stop_table(self, stops: tuple[str, ...]) -> np.ndarray:
        """[vocab] bool: the tokens whose own text contains a stop string (computed once per set)."""
        if stops not in self._stop_tables:
            size = min(len(self.tokenizer), self.config.vocab_size)
            texts = self.tokenizer.batch_decode([[i] for i in range(size)], clean_up_tokenization_spaces=False)
            table = np.zeros(self.config.vocab_size, bool)
            table[:size] = [any(s in t for s in stops) for t in texts]
            self._stop_tables[stops] = table
        return self._stop_tables[stops]


def _cut_at_stop(result: Completion, stops, decode) -> None:
    """Cuts the text before the first stop string, and the ids after the token that completed it."""
    found = [i for i in (result.completion.find(s) for s in stops) if i >= 0]
    if not found:
        return
    result.completion = result.completion[: min(found)]
    result.finish_reason = "stop"
    ids = result.completion_ids
    # The shortest prefix whose text holds a stop string (a bisection: prefixes only grow).
    has_stop = lambda k: any(s in decode(ids[:k]) for s in stops)  # noqa: E731
    lo, hi = 1, len(ids)
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if has_stop(mid) else (mid + 1, hi)
    result.completion_ids = ids[:lo]


def generate(model: GPT2, tokenizer, prompts: Sequence[str], *, mesh=None, batch_size: int = 16,
             buckets: Buckets = Buckets(), **settings) -> list[Completion]:
    """Completions of text prompts by a causal_lm model: one Completion each, in order.

    settings: max_new_tokens (64), temperature (0: greedy), top_k (0: off), top_p (1: off), seed
    (one, or one per prompt), stop (strings), eos_token_id ("default": the tokenizer's). For many
    calls, build a Generator once and call its generate.
    """
    return Generator(model, tokenizer, mesh=mesh, batch_size=batch_size, buckets=buckets).generate(
        prompts, **settings)


def generate_ids(model: GPT2, prompts: Sequence[Sequence[int]], *, mesh=None, batch_size: int = 16,
                 buckets: Buckets = Buckets(), **settings) -> list[Completion]:
    """generate on token ids, without a tokenizer (no stop strings; stop_sequences and stop_tokens instead)."""
    return Generator(model, mesh=mesh, batch_size=batch_size, buckets=buckets).generate_ids(
        prompts, **settings)

