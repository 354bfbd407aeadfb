"""method='exact': every class scored; the reference and the baseline."""
import numpy as np

from ..engine import exact_topk
from .base import Method
from .registry import register


@register
class Exact(Method):
    name = "exact"
    supports_spherical = True

    @classmethod
    def build(cls, layer, params, train, labels, verbose):
        return cls()

    @classmethod
    def restore(cls, layer, arrays, state):
        """The exact method has no arrays; a file holding some is refused."""
        method = cls(arrays, state)
        if method.arrays:
            raise ValueError(f"arrays: method 'exact' has none, got {sorted(str(name) for name in method.arrays)}")
        return method

    def search(self, layer, H, k, params):
        scores, labels = exact_topk(layer.W, layer.b, H, k, engine=params.engine, square=layer.square)
        return scores, labels, np.full(H.shape[0], layer.n_classes, np.int64)
