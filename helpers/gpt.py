"""A small decoder-only transformer for the fab's tool logs, in the spirit of nanoGPT.

- ``ToolLogTokenizer``: field-aware. The grammar's fixed words (``RUN``, ``LOT-``,
  ``T=``, ``TEMP_OUT_OF_RANGE``, ...) are one token each; digits and punctuation are one
  character each. The model spends its capacity on the numbers, not on spelling words.
- ``ToolLogGPT``: token embeddings, ``n_layer`` pre-norm blocks of causal self-attention
  with **rotary position embeddings** (RoPE, as LLaMA) and an MLP, then a linear head.
  Rotary positions make attention depend on how far apart two tokens are, so
  "five digits after ``LOT-``" is one pattern wherever a line starts.
- ``generate``: greedy or sampled continuation, **with or without a KV cache**. The two
  paths compute the same thing: the cache only saves recomputing the keys and values of
  tokens already seen (``helpers.kv_cache``).

The attention step is where a cache gets subtle. A new token at absolute position ``p``
must attend to every cached position ``<= p``: its queries are few, its keys many, so the
mask is not the square causal one (``is_causal=True`` would be wrong there), and the
new token's query and key are rotated for position ``p``, not for 0. The cache keeps keys
already rotated, as vLLM's does.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .kv_cache import KVCache
from .repository import TensorSpec, register_architecture
from .toollogs import ALARMS, KITS

__all__ = ["BOS", "ToolLogTokenizer", "GPTConfig", "ToolLogGPT", "attend", "use_attention",
           "generate", "log_requests"]

BOS = "<bos>"


class ToolLogTokenizer:
    """Longest match over the grammar's words, then single characters."""

    WORDS = ([BOS, " RUN ", " ALARM ", " PM ", " IDLE ", "START", "END", " KIT=", "LOT-",
              " T=", " P=", " PC=", " RF=", " SEV=", " PASS", " FAIL",
              "ETCH-0", "CVD-0", "CMP-0", "LITHO-0"]
             + [code for code, _ in ALARMS.values()] + [f" {text}" for _, text in ALARMS.values()]
             + KITS)
    CHARS = list("0123456789:/. \ns")

    def __init__(self) -> None:
        self.vocab = self.WORDS + self.CHARS
        self.ids = {token: i for i, token in enumerate(self.vocab)}
        by_length = sorted(self.vocab, key=len, reverse=True)
        self._pattern = re.compile("|".join(re.escape(t) for t in by_length))

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def bos_id(self) -> int:
        return self.ids[BOS]

    def encode(self, text: str) -> list[int]:
        ids, at = [], 0
        for match in self._pattern.finditer(text):
            if match.start() != at:
                raise ValueError(f"cannot tokenise {text[at:match.start()]!r} at {at}")
            ids.append(self.ids[match.group()])
            at = match.end()
        if at != len(text):
            raise ValueError(f"cannot tokenise {text[at:at + 20]!r} at {at}")
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.vocab[i] for i in ids if self.vocab[i] != BOS)


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int
    context: int = 256
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 128

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head


def rotary_tables(context: int, head_dim: int, base: float = 10_000.0) -> tuple[torch.Tensor,
                                                                                torch.Tensor]:
    """cos and sin, ``(context, head_dim / 2)``: the angle of pair ``i`` at position ``p`` is
    ``p / base ** (2i / head_dim)``."""
    inverse = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(context, dtype=torch.float32), inverse)
    return angles.cos(), angles.sin()


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each (even, odd) pair of ``x`` (``(B, H, T, D)``) by its position's angle."""
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: KVCache | None,
           layer: int, start: int) -> torch.Tensor:
    """Causal attention of new tokens over everything before them; ``(B, H, T, D)`` out.

    ``q``, ``k``, ``v``: ``(B, H, T, D)``, the ``T`` new tokens at positions
    ``start..start+T``, already rotated for those positions. With a cache, the new keys and
    values are written first, then attended over with everything cached before them.
    """
    if cache is not None:  # write the new K/V first, then attend over all of them
        k, v = cache.update(layer, start, k, v)
    steps, seen = q.shape[2], k.shape[2]
    if steps == seen:  # no cache, or a prefill from position 0: the square mask
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    if steps == 1:  # one new token sees everything before it, and itself
        return F.scaled_dot_product_attention(q, k, v)
    # a chunk of new tokens after cached ones: query i sees keys 0..start+i (is_causal
    # would align the mask top-left, as if the chunk started at position 0)
    mask = torch.ones(steps, seen, dtype=torch.bool, device=q.device).tril(start)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


@contextmanager
def use_attention(model: ToolLogGPT, attention) -> Iterator[ToolLogGPT]:
    """Run ``model`` with another attention function (``attend``'s signature) in every
    layer, e.g. yours; the model's own comes back on the way out."""
    layers = [block.attn for block in model.blocks]
    for layer in layers:
        layer.attend = attention
    try:
        yield model
    finally:
        for layer in layers:
            layer.attend = attend


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.attend = attend  # the attention over new and cached keys (use_attention swaps it)
        self.n_head = config.n_head
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)
        self.out = nn.Linear(config.d_model, config.d_model)
        cos, sin = rotary_tables(config.context, config.head_dim)
        self.register_buffer("cos", cos, persistent=False)  # derived, not learned: not saved
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0,
                start: int = 0) -> torch.Tensor:
        """``x``: ``(B, T, C)``, the tokens at positions ``start..start+T``."""
        batch, steps, channels = x.shape
        q, k, v = (t.view(batch, steps, self.n_head, -1).transpose(1, 2)
                   for t in self.qkv(x).split(channels, dim=2))  # (B, H, T, D) each
        # A batch of sequences at different positions (a paged decode step) brings each
        # row's position and a mask over its padded keys; otherwise every row sits at start.
        rows_at, mask = getattr(cache, "positions", None), getattr(cache, "mask", None)
        if rows_at is None:
            cos, sin = self.cos[start:start + steps], self.sin[start:start + steps]
        else:
            cos, sin = self.cos[rows_at][:, None], self.sin[rows_at][:, None]  # (B, 1, T, D/2)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        if mask is not None:  # a paged decode step: each row over its own blocks
            k, v = cache.update(layer, start, k, v)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            y = self.attend(q, k, v, cache, layer, start)
        return self.out(y.transpose(1, 2).reshape(batch, steps, channels))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(config.d_model), nn.LayerNorm(config.d_model)
        self.attn = CausalSelfAttention(config)
        self.mlp = nn.Sequential(nn.Linear(config.d_model, 4 * config.d_model), nn.GELU(),
                                 nn.Linear(4 * config.d_model, config.d_model))

    def forward(self, x, cache=None, layer=0, start=0):
        x = x + self.attn(self.ln1(x), cache, layer, start)
        return x + self.mlp(self.ln2(x))


@register_architecture
class ToolLogGPT(nn.Module):
    """``(B, T)`` token ids -> ``(B, T, vocab)`` next-token logits."""

    def __init__(self, vocab_size: int, context: int = 256, n_layer: int = 4, n_head: int = 4,
                 d_model: int = 128):
        super().__init__()
        self.config = GPTConfig(vocab_size, context, n_layer, n_head, d_model)
        self.tokens = nn.Embedding(vocab_size, d_model)
        self.blocks = nn.ModuleList(Block(self.config) for _ in range(n_layer))
        self.ln = nn.LayerNorm(d_model)
        # Not tied to the token embedding (GPT-2 ties them): with 48 tokens the saving is
        # 6,144 numbers, and safetensors stores no tensor twice.
        self.head = nn.Linear(d_model, vocab_size, bias=False)

    def forward(self, ids: torch.Tensor, cache: KVCache | None = None,
                start: int = 0) -> torch.Tensor:
        steps = ids.shape[1]
        if start + steps > self.config.context:
            raise ValueError(f"positions up to {start + steps} are past the context of "
                             f"{self.config.context}")
        x = self.tokens(ids)  # positions enter in attention, by rotation
        for layer, block in enumerate(self.blocks):
            x = block(x, cache, layer, start)
        return self.head(self.ln(x))

    def new_cache(self, batch: int, max_len: int | None = None) -> KVCache:
        c = self.config
        weight = self.tokens.weight
        return KVCache(c.n_layer, batch, c.n_head, max_len or c.context, c.head_dim,
                       dtype=weight.dtype, device=weight.device)

    # -- what the model repository needs --------------------------------------------------
    def architecture(self) -> dict:
        return {"class": "ToolLogGPT", **asdict(self.config)}

    def io_specs(self) -> dict:
        return {"inputs": [TensorSpec("token_ids", "INT64", [-1, -1])],
                "outputs": [TensorSpec("next_token_probabilities", "FP32",
                                       [-1, self.config.vocab_size])],
                "feature_names": list(ToolLogTokenizer().vocab)}

    def probabilities(self, ids: torch.Tensor) -> torch.Tensor:
        """The next token's distribution after each sequence (what v2 ``infer`` returns)."""
        return torch.softmax(self(ids.long())[:, -1], dim=-1)


@torch.inference_mode()
def generate(model: ToolLogGPT, prompts: torch.Tensor | Sequence[Sequence[int]],
             max_new_tokens: int, *, use_cache: bool = True, temperature: float = 0.0,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Continue ``prompts`` (``(B, T)``, equal lengths) by ``max_new_tokens`` tokens.

    ``temperature=0`` is greedy. Returns ``(B, T + max_new_tokens)`` ids. With
    ``use_cache=False`` every step runs the whole text again — the baseline the cache beats.
    """
    device = model.tokens.weight.device
    ids = prompts.to(device, torch.long) if isinstance(prompts, torch.Tensor) else \
        torch.as_tensor(np.asarray(prompts), dtype=torch.long, device=device)
    if ids.ndim != 2 or ids.shape[1] == 0:
        raise ValueError(f"prompts must be (batch, length >= 1), got {tuple(ids.shape)}")
    total = ids.shape[1] + max_new_tokens
    if total > model.config.context:
        raise ValueError(f"{ids.shape[1]} prompt + {max_new_tokens} new tokens is over the "
                         f"context of {model.config.context}")
    cache = model.new_cache(ids.shape[0], total) if use_cache else None
    logits = model(ids, cache)[:, -1]  # the prefill: the whole prompt in one step
    for step in range(max_new_tokens):
        next_id = _pick(logits, temperature, generator)
        ids = torch.cat([ids, next_id[:, None]], dim=1)
        if step == max_new_tokens - 1:
            break
        if cache is not None:  # one token through the model; the rest is in the cache
            logits = model(next_id[:, None], cache, start=ids.shape[1] - 1)[:, -1]
        else:
            logits = model(ids)[:, -1]
    return ids


def _pick(logits: torch.Tensor, temperature: float,
          generator: torch.Generator | None) -> torch.Tensor:
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


# -- training and the quality bar --------------------------------------------------------
def training_tokens(n_logs: int, lines_per_log: int = 40, seed: int = 0) -> torch.Tensor:
    """Every log's tokens after a BOS, end to end: the stream training windows come from."""
    from .toollogs import make_tool_logs

    tokenizer = ToolLogTokenizer()
    stream: list[int] = []
    for log in make_tool_logs(n_logs, lines_per_log, seed=seed):
        stream += [tokenizer.bos_id, *tokenizer.encode(log)]
    return torch.tensor(stream, dtype=torch.long)


def train_tool_log_lm(steps: int = 300, batch_size: int = 16, seed: int = 0, lr: float = 5e-3,
                      n_logs: int = 600, progress=None) -> tuple[ToolLogGPT, dict]:
    """Train on random context-long windows of synthesised logs (deterministic in ``seed``).

    ``progress(step, loss)`` is called every 100 steps. Returns the model (eval mode, CPU)
    and what to record about its training.
    """
    import time

    torch.manual_seed(seed)
    tokenizer = ToolLogTokenizer()
    model = ToolLogGPT(tokenizer.vocab_size)
    context = model.config.context
    stream = training_tokens(n_logs, seed=seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(  # linear warm-up, then cosine to 10 %
        optimizer, lambda s: min(1.0, (s + 1) / warmup) *
        (0.1 + 0.45 * (1 + np.cos(np.pi * min(s, steps) / steps))))
    sampler = torch.Generator().manual_seed(seed)
    # bf16 matrix products where the CPU has them natively (AVX512-BF16, AMX): about 1.4x
    # faster steps on two cores; the weights and the optimizer stay float32.
    fast_bf16 = bool(torch.backends.mkldnn.is_available()
                     and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    start, loss = time.perf_counter(), torch.tensor(float("nan"))
    model.train()
    for step in range(steps):
        at = torch.randint(0, len(stream) - context - 1, (batch_size,), generator=sampler)
        window = torch.stack([stream[a:a + context + 1] for a in at.tolist()])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=fast_bf16):
            logits = model(window[:, :-1])
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]),
                               window[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if progress is not None and (step + 1) % 100 == 0:
            progress(step + 1, loss.item())
    model.eval()
    return model, {"data": "helpers.toollogs.make_tool_logs", "logs": n_logs, "steps": steps,
                   "bf16_autocast": fast_bf16,
                   "batch_size": batch_size, "seed": seed, "final_loss": round(loss.item(), 4),
                   "train_seconds": round(time.perf_counter() - start, 1)}


def sample_lines(model: ToolLogGPT, n_samples: int = 16, new_tokens: int = 200,
                 temperature: float = 1.0, seed: int = 0) -> list[str]:
    """Complete lines the model writes after a real log's first line (the prompt's line and
    the last, unfinished one are left out)."""
    from .toollogs import make_tool_log

    tokenizer = ToolLogTokenizer()
    generator = torch.Generator(device=model.tokens.weight.device).manual_seed(seed)
    lines = []
    for i in range(n_samples):
        prompt = [tokenizer.bos_id, *tokenizer.encode(make_tool_log(1, seed=10_000 + seed + i)[0]
                                                      + "\n")]
        out = generate(model, [prompt], new_tokens, temperature=temperature, generator=generator)
        text = tokenizer.decode(out[0, len(prompt):].tolist())
        lines += text.split("\n")[:-1]
    return lines


def log_requests(n: int, context: int = 256, seed: int = 0) -> list[tuple[str, list[int], int]]:
    """Generation requests like the log assistant's traffic: ``(id, prompt ids, tokens to
    generate)``, each prompt one or two real log lines after a BOS, each answer from 16
    tokens up to the rest of the context, log-uniformly — most short, a few long, as chat
    traffic is (deterministic in ``seed``)."""
    from .toollogs import make_tool_log

    tokenizer, rng = ToolLogTokenizer(), np.random.default_rng(seed)
    requests = []
    for i in range(n):
        lines = make_tool_log(int(rng.integers(1, 3)), seed=1000 + seed * 100 + i)
        ids = [tokenizer.bos_id, *tokenizer.encode("\n".join(lines) + "\n")]
        longest = context - len(ids)
        new = int(np.exp(rng.uniform(np.log(16), np.log(longest + 1))))
        requests.append((f"req-{i}", ids, min(new, longest)))
    return requests


def parse_rate(lines: Sequence[str]) -> float:
    """The share of lines that are valid tool-log lines."""
    from .toollogs import parses

    return sum(map(parses, lines)) / len(lines) if lines else 0.0
