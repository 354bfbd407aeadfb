"""Hugging Face transformers: run ``model.generate`` with an indexed output layer (optional; imports torch).

    index = lm_head_index(model, method="exact")            # or any index built over the same weights
    with patch_lm_head(model, index, k=50):
        out = model.generate(input_ids, max_new_tokens=32)  # greedy, sampling, beam search as usual

The model's output embeddings are swapped for an IndexedHead with dense=True: each position gets (..., D)
float32 logits that hold the exact logits of its k candidates and -inf elsewhere, so every logits processor
and decoding strategy of transformers works unchanged and can only pick a candidate. generate passes
logits_to_keep=1 to models that accept it, so the head runs on the last position only. Models that transform
the logits after the head (Gemma's final_logit_softcapping) turn -inf into finite values; a warning says so."""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from .rows import as_float32_rows
from .torch import IndexedHead

CHECKED_ROWS = 64      # rows of W compared with the model's head by patch_lm_head


def _output_layer(model):
    """The model's output embeddings module (with .weight (D, d)); an error naming `model` when it has none or
    when it is an IndexedHead already."""
    get = getattr(model, "get_output_embeddings", None)
    if get is None or not hasattr(model, "set_output_embeddings"):
        raise TypeError(f"model: expected a transformers model with output embeddings, got {type(model).__name__}")
    head = get()
    if isinstance(head, IndexedHead):
        raise ValueError("model: its output layer is already an IndexedHead; restore() the earlier patch first")
    if head is None or getattr(head, "weight", None) is None or head.weight.ndim != 2:
        raise TypeError(f"model: {type(model).__name__} has no output layer with a (D, d) weight")
    return head


def lm_head_index(model, method: str = "exact", **build_settings: Any):
    """An index over the model's output layer: wolindex.build(weight, bias, method, **build_settings)."""
    from .build import build

    head = _output_layer(model)
    bias = getattr(head, "bias", None)
    return build(head.weight.detach(), None if bias is None else bias.detach(), method=method, **build_settings)


class PatchedHead:
    """What patch_lm_head returns: `head` (the IndexedHead now in the model) and `original` (the head it
    replaced); restore() puts the original back, as does leaving a `with` block."""

    def __init__(self, model, head: IndexedHead, original):
        self.model, self.head, self.original = model, head, original

    def restore(self) -> None:
        self.model.set_output_embeddings(self.original)

    def __enter__(self) -> "PatchedHead":
        return self

    def __exit__(self, *exc) -> None:
        self.restore()


def _check_same_layer(host, head, compare_rows: bool) -> None:
    """ValueError naming `index` unless the host Index's layer has the head's shape and, with compare_rows,
    its W and b agree with the head's on CHECKED_ROWS spread rows (to 1e-2 relative: a half-precision copy
    of the same weights passes)."""
    D, d = head.weight.shape
    if (host.n_classes, host.dim) != (D, d):
        raise ValueError(f"index: built over a ({host.n_classes}, {host.dim}) layer, the model's output layer is "
                         f"({D}, {d})")
    if not compare_rows:
        return
    rows = np.unique(np.linspace(0, D - 1, min(D, CHECKED_ROWS)).astype(np.int64))
    W = head.weight.detach()[rows].float().cpu().numpy()
    bias = getattr(head, "bias", None)
    b = np.zeros(rows.size, np.float32) if bias is None else bias.detach()[rows].float().cpu().numpy()
    stored = host.layer.rows_of(rows)
    if not (np.allclose(as_float32_rows(host.layer.W[stored]), W, rtol=1e-2, atol=1e-3)
            and np.allclose(host.layer.b[stored], b, rtol=1e-2, atol=1e-3)):
        raise ValueError("index: its W / b differ from the model's output layer; build it from that layer "
                         "(wolindex.hf.lm_head_index(model, ...))")


def patch_lm_head(model, index, k: int = 50, *, check_weights: bool = True, **search_settings: Any) -> PatchedHead:
    """Replace model's output layer by IndexedHead(index, k, dense=True, **search_settings) until restore().

    index: an Index (or GpuIndex, for a model on CUDA: k <= 32 there) over the same (W, b) as the model's
    output layer; check_weights: compare a few rows of both first. Returns a PatchedHead (a context manager)."""
    original = _output_layer(model)
    head = IndexedHead(index, k, dense=True, **search_settings)
    _check_same_layer(head.host, original, check_weights)
    if getattr(getattr(model, "config", None), "final_logit_softcapping", None):
        warnings.warn("model: final_logit_softcapping maps the -inf logits outside the candidates to finite "
                      "values; sampling may pick a non-candidate class", stacklevel=2)
    model.set_output_embeddings(head)
    return PatchedHead(model, head, original)
