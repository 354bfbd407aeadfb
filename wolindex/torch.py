"""IndexedHead: a PyTorch module that replaces a model's output projection by an index search (optional extra
``wolindex[torch]``; importing this module imports torch).

    head = IndexedHead(index, k=10)                 # or IndexedHead.from_linear(model.lm_head, method="lss", ...)
    values, ids = head(hidden)                      # hidden (..., d) -> (..., k) float32 logits, int64 ids
    logits = IndexedHead(index, k=50, dense=True)(hidden)   # (..., D) float32, -inf outside the candidates

CPU tensors are searched by the index in place (a float32 contiguous tensor is read without a copy); CUDA
tensors by the GPU engine (the index moved once per device with ``index.to('cuda:N')``; k <= 32 there). The
search is not differentiable: outputs carry no gradient. Works under torch.no_grad and torch.inference_mode."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .arrays import check_k


class IndexedHead(nn.Module):
    """Top-k of ``hidden @ W.T + b`` by an index (an Index, or a GpuIndex serving CUDA tensors on its device).

    k: candidates per position; dense: return (..., D) logits that are -inf outside the candidates instead
    of (values, ids); search_settings: the method's search settings for every call (checked here)."""

    def __init__(self, index, k: int = 10, dense: bool = False, **search_settings: Any):
        super().__init__()
        host = getattr(index, "index", index)
        if not hasattr(host, "search_params") or not hasattr(host, "layer"):
            raise TypeError(f"index: expected a wolindex Index or GpuIndex, got {type(index).__name__}")
        if not isinstance(dense, bool):
            raise TypeError(f"dense: expected a bool, got {type(dense).__name__}")
        host.search_params(**search_settings)
        self.index, self.host = index, host
        self.k, self.dense = check_k(k, host.n_classes), dense
        self.search_settings = dict(search_settings)
        self._on_device: dict[str, Any] = {}

    @classmethod
    def from_linear(cls, linear: nn.Linear, method: str = "exact", *, k: int = 10, dense: bool = False,
                    search_settings: dict[str, Any] | None = None, **build_settings: Any) -> "IndexedHead":
        """An IndexedHead over an nn.Linear's weight (D, d) and bias (D,) or None: wolindex.build(weight, bias,
        method, **build_settings) (train=H, labels=y, ... for learned methods), then IndexedHead(index, k,
        dense, **search_settings)."""
        from .build import build

        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear: expected a torch.nn.Linear, got {type(linear).__name__}")
        bias = None if linear.bias is None else linear.bias.detach()
        index = build(linear.weight.detach(), bias, method=method, **build_settings)
        return cls(index, k, dense, **(search_settings or {}))

    @property
    def n_classes(self) -> int:
        return self.host.n_classes

    def extra_repr(self) -> str:
        return f"method={self.host.method_name!r}, D={self.host.n_classes}, d={self.host.dim}, k={self.k}, " \
               f"dense={self.dense}"

    def _index_for(self, device: torch.device):
        """The index that searches tensors on `device`: the host Index on the CPU, a GpuIndex on CUDA."""
        if device.type == "cpu":
            return self.host
        if device.type != "cuda":
            raise ValueError(f"hidden: tensors on {device} are not supported (CPU or CUDA)")
        if self.index is not self.host:
            return self.index
        key = str(device if device.index is not None else torch.device("cuda", torch.cuda.current_device()))
        if key not in self._on_device:
            self._on_device[key] = self.host.to(key)
        return self._on_device[key]

    def forward(self, hidden: torch.Tensor):
        """hidden (..., d) float tensor -> (values (..., k) float32, ids (..., k) int64), best first (ties: the
        smaller id; -inf / -1 padding when a method finds fewer than k), or with dense=True (..., D) float32."""
        if not isinstance(hidden, torch.Tensor):
            raise TypeError(f"hidden: expected a torch.Tensor, got {type(hidden).__name__}")
        d = self.host.dim
        if hidden.ndim == 0 or hidden.shape[-1] != d:
            raise ValueError(f"hidden: expected shape (..., {d}) to match the index, got {tuple(hidden.shape)}")
        lead = tuple(hidden.shape[:-1])
        flat = hidden.detach().reshape(-1, d)
        if flat.shape[0] == 0:
            values = torch.empty((0, self.k), dtype=torch.float32, device=hidden.device)
            ids = torch.empty((0, self.k), dtype=torch.int64, device=hidden.device)
        else:
            values, ids = self._search(flat)
        if self.dense:
            dense = torch.full((flat.shape[0], self.host.n_classes), -torch.inf, dtype=torch.float32,
                               device=values.device)
            found = ids >= 0
            dense.scatter_reduce_(1, ids.clamp(min=0), torch.where(found, values, -torch.inf), reduce="amax")
            return dense.reshape(lead + (self.host.n_classes,))
        return values.reshape(lead + (self.k,)), ids.reshape(lead + (self.k,))

    def _search(self, flat: torch.Tensor):
        """(N, d) tensor -> values (N, k) float32, ids (N, k) int64 on flat's device."""
        index = self._index_for(flat.device)
        if flat.device.type == "cpu":
            if flat.dtype != torch.float32:
                flat = flat.float()
            scores, labels = index.search(flat.contiguous().numpy(), self.k, **self.search_settings)
            return torch.from_numpy(scores), torch.from_numpy(labels)
        values, ids = index.search(flat.contiguous(), self.k, **self.search_settings)
        return values, ids
