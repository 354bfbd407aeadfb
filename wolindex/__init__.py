"""wolindex: fast top-k inference for wide output layers, treating (W, b) as a search index.

    idx = wolindex.build(W, b, method="exact")
    scores, labels = idx.search(H, k=10)
    idx.save("lm.wol"); idx = wolindex.load("lm.wol")
    result = wolindex.train(W, b, H, labels, loss="spherical")   # O(d^2) per example
"""
__version__ = "0.1.0"

from .build import build  # noqa: E402
from .index import Index  # noqa: E402
from .io import load_index as load  # noqa: E402
from .layer import OutputLayer  # noqa: E402
from .methods import METHODS  # noqa: E402
from .training import train  # noqa: E402
from .weights import load_layer, read_tensor  # noqa: E402

__all__ = ["Index", "METHODS", "OutputLayer", "__version__", "build", "load", "load_layer", "read_tensor", "train"]
