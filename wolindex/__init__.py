"""wolindex: fast top-k inference for wide output layers, treating (W, b) as a search index.

    idx = wolindex.build(W, b, method="exact")
    scores, labels = idx.search(H, k=10)
    idx.save("lm.wol"); idx = wolindex.load("lm.wol")
    result = wolindex.train(W, b, H, labels, loss="spherical")   # O(d^2) per example
"""
from ._version import __version__
from .build import build
from .index import Index, load
from .layer import OutputLayer
from .methods import METHODS
from .training import train
from .weights import load_layer, read_tensor

__all__ = ["Index", "METHODS", "OutputLayer", "__version__", "build", "load", "load_layer", "read_tensor", "train"]
