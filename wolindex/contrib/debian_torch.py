"""The debian-lm-100k language model in PyTorch (its folder's hidden.py is the NumPy reference), with a KV
cache for step-by-step decoding; tooling for benchmarks/generate.py and the tests (imports torch).

    model = DebianLM.load()                      # from WOLINDEX_DATA/debian-lm-100k
    hidden = model(ids)                          # (B, t) int64 -> (B, t, 256) float32 final hidden states
    logits = hidden @ model.W.T + model.b        # the output layer (W tied to the input embedding)
    out = decode(model, prompt, 32, pick)        # pick(hidden (B, 256)) -> (B,) next ids, e.g. an IndexedHead

4 pre-LayerNorm transformer blocks (d = 256, 4 heads, feed-forward 1024, exact GELU), learned absolute
positions over a context of CONTEXT tokens, a final LayerNorm."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .datasets import DATA_ENV, debian_lm_100k_path

CONTEXT, DIM, HEADS, LAYERS, FF = 128, 256, 4, 4, 1024


class KVCache:
    """Keys and values of every block for the positions seen so far, each (B, HEADS, length, DIM / HEADS)."""

    def __init__(self):
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []

    @property
    def length(self) -> int:
        return self.keys[0].shape[2] if self.keys else 0

    def extend(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append the new positions' keys and values of block `layer`; returns that block's full keys, values."""
        if layer == len(self.keys):
            self.keys.append(k)
            self.values.append(v)
        else:
            self.keys[layer] = torch.cat([self.keys[layer], k], dim=2)
            self.values[layer] = torch.cat([self.values[layer], v], dim=2)
        return self.keys[layer], self.values[layer]


class Block(nn.Module):
    """One pre-LayerNorm transformer block (parameter names as in body.npz)."""

    def __init__(self):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(DIM), nn.LayerNorm(DIM)
        self.qkv, self.proj = nn.Linear(DIM, 3 * DIM), nn.Linear(DIM, DIM)
        self.ff = nn.Sequential(nn.Linear(DIM, FF), nn.GELU(), nn.Linear(FF, DIM))

    def forward(self, x: torch.Tensor, layer: int, cache: KVCache | None, start: int) -> torch.Tensor:
        """x (B, t, DIM) at positions start.. -> (B, t, DIM); the cache (when given) gains the t positions."""
        B, t, _ = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, t, 3, HEADS, DIM // HEADS).permute(2, 0, 3, 1, 4)
        if cache is not None:
            k, v = cache.extend(layer, k, v)
        mask = None
        if t > 1:
            mask = torch.arange(k.shape[2], device=x.device)[None, :] <= torch.arange(start, start + t,
                                                                                     device=x.device)[:, None]
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.proj(a.transpose(1, 2).reshape(B, t, DIM))
        return x + self.ff(self.ln2(x))


class DebianLM(nn.Module):
    """The model's body: token ids -> final hidden states; W (D, DIM) and b (D,) are its output layer."""

    def __init__(self, n_classes: int):
        super().__init__()
        self.embed = nn.Embedding(n_classes, DIM)
        self.pos = nn.Parameter(torch.zeros(CONTEXT, DIM))
        self.blocks = nn.ModuleList(Block() for _ in range(LAYERS))
        self.ln = nn.LayerNorm(DIM)
        self.bias = nn.Parameter(torch.zeros(n_classes))

    @classmethod
    def load(cls, folder: Path | str | None = None) -> "DebianLM":
        """The trained model from folder (default: debian-lm-100k under WOLINDEX_DATA), in float32, in eval
        mode, without gradients."""
        folder = Path(folder) if folder is not None else debian_lm_100k_path()
        if folder is None:
            raise FileNotFoundError(f"debian-lm-100k: set {DATA_ENV} to the folder that holds debian-lm-100k/")
        W = np.load(folder / "W.npy").astype(np.float32)
        with np.load(folder / "body.npz") as body:
            state = {name: torch.from_numpy(body[name]) for name in body.files}
        state["embed.weight"] = torch.from_numpy(W)
        model = cls(W.shape[0])
        model.load_state_dict(state, strict=True)
        return model.eval().requires_grad_(False)

    @property
    def W(self) -> torch.Tensor:
        """The output weights (D, DIM), tied to the input embedding."""
        return self.embed.weight

    @property
    def b(self) -> torch.Tensor:
        """The output bias (D,)."""
        return self.bias

    def forward(self, ids: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """ids (B, t) int64 at positions cache.length.. (0.. without a cache) -> (B, t, DIM) float32 hidden
        states after the final LayerNorm; the cache, when given, gains the t positions."""
        start = cache.length if cache is not None else 0
        if ids.ndim != 2 or not 1 <= ids.shape[1] <= CONTEXT - start:
            raise ValueError(f"ids: expected (B, t) with 1 <= t <= {CONTEXT - start} (context {CONTEXT}, "
                             f"{start} cached), got shape {tuple(ids.shape)}")
        x = self.embed(ids) + self.pos[start:start + ids.shape[1]]
        for layer, block in enumerate(self.blocks):
            x = block(x, layer, cache, start)
        return self.ln(x)


@dataclass
class Decoded:
    """tokens (B, n_new) int64; prefill_s: seconds of the prompt's forward pass; decode_s: seconds of the
    n_new steps after it (picks and re-encodings included)."""

    tokens: torch.Tensor
    prefill_s: float
    decode_s: float


def decode(model: DebianLM, prompt: torch.Tensor, n_new: int, pick, keep: int = CONTEXT // 2) -> Decoded:
    """Decode n_new tokens after prompt (B, P) int64, P <= CONTEXT: pick(hidden (B, DIM) float32) -> (B,) int64
    chooses each next token (argmax of a head: greedy). Keys and values are cached; when the context is full
    the cache is rebuilt from the last `keep` tokens (absolute positions cannot slide), so the model always
    sees between keep and CONTEXT tokens."""
    if not 1 <= keep <= CONTEXT:
        raise ValueError(f"keep: expected 1 <= keep <= {CONTEXT}, got {keep}")
    with torch.inference_mode():
        t0 = time.perf_counter()
        cache = KVCache()
        h = model(prompt, cache)[:, -1]
        t1 = time.perf_counter()
        tokens = torch.empty((prompt.shape[0], n_new), dtype=torch.int64)
        for i in range(n_new):
            tokens[:, i] = pick(h)
            if i + 1 == n_new:
                break
            if cache.length == CONTEXT:
                cache = KVCache()
                h = model(torch.cat([prompt, tokens[:, :i + 1]], dim=1)[:, -keep:], cache)[:, -1]
            else:
                h = model(tokens[:, i:i + 1], cache)[:, -1]
        return Decoded(tokens, t1 - t0, time.perf_counter() - t1)
