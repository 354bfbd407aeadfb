"""DS-Softmax's gate: the model trained with the experts (ds.training) and the router of the search, written
once for both engines (see methods.ops)."""
from __future__ import annotations

import numpy as np

from ..ops import HostOps

TRAINING_OPS = HostOps(engine=None)   # NumPy products (BLAS) and top_columns, as training routes


class Gate:
    """Linear gate U h + c, or with hidden > 0: U2 relu(U1 h + c1) + c2 (params U, c and U1, c1; U2 is U).
    Its arrays are on the host or, as a router moved by `to`, on a device."""

    def __init__(self, dim: int, n_experts: int, hidden: int, rng: np.random.Generator):
        self.hidden = hidden
        if hidden:
            self.params = {"U1": (rng.standard_normal((hidden, dim)) / np.sqrt(dim)).astype(np.float32),
                           "c1": np.zeros(hidden, np.float32),
                           "U": np.zeros((n_experts, hidden), np.float32), "c": np.zeros(n_experts, np.float32)}
        else:
            self.params = {"U": np.zeros((n_experts, dim), np.float32), "c": np.zeros(n_experts, np.float32)}

    @classmethod
    def from_arrays(cls, params: dict, hidden: int) -> "Gate":
        """A trained gate from its parameter arrays (U, c and, with a hidden layer, U1, c1)."""
        gate = cls.__new__(cls)
        gate.hidden = hidden
        gate.params = dict(params)
        return gate

    def to(self, move) -> "Gate":
        """This gate with every array passed through move (e.g. a copy to a device)."""
        return Gate.from_arrays({name: move(a) for name, a in self.params.items()}, self.hidden)

    @property
    def n_experts(self) -> int:
        return self.params["c"].shape[0]

    def features(self, H, ops=TRAINING_OPS):
        """What the output layer of the gate sees: H itself, or the hidden layer's activations."""
        p = self.params
        return ops.xp.maximum(ops.scores(H, p["U1"], p["c1"]), 0.0) if self.hidden else H

    def forward(self, H, ops=TRAINING_OPS):
        """H (B, d) -> logits (B, K) and what backward needs (the input and the gate's features)."""
        z = self.features(H, ops)
        return ops.scores(z, self.params["U"], self.params["c"]), (H, z)

    def backward(self, dlogits: np.ndarray, cache) -> dict:
        H, z = cache
        grads = {"U": dlogits.T @ z, "c": dlogits.sum(axis=0)}
        if self.hidden:
            dz = (dlogits @ self.params["U"]) * (z > 0)
            grads["U1"] = dz.T @ H
            grads["c1"] = dz.sum(axis=0)
        return grads

    def split(self, directions: np.ndarray, centres: np.ndarray, margin: float) -> None:
        """Mitosis: expert e becomes experts 2e and 2e + 1, whose gate rows are e's plus / minus
        margin * directions[e] (unit vectors in feature space), biased so that they tie at centres[e]."""
        U, c = self.params["U"], self.params["c"]
        shift = margin * directions
        offset = (shift * centres).sum(axis=1)
        U2 = np.empty((2 * U.shape[0], U.shape[1]), np.float32)
        U2[0::2], U2[1::2] = U + shift, U - shift
        c2 = np.empty(2 * c.shape[0], np.float32)
        c2[0::2], c2[1::2] = c - offset, c + offset
        self.params["U"], self.params["c"] = U2, c2

    def route(self, H, m: int, ops=TRAINING_OPS):
        """(N, d) -> (N, m) int32: the m experts with the largest gate logits, best first, on ops' engine. A
        linear gate's are a top-m over its rows (ops.top_rows: on the CPU engine, no BLAS call whose threads
        would spin against the engine's)."""
        if self.hidden:
            return ops.top_columns(self.forward(H, ops)[0], m)
        return ops.top_rows(self.params["U"], self.params["c"], H, m)
