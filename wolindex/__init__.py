"""wolindex: fast top-k inference for wide output layers, treating (W, b) as a search index.

    idx = wolindex.build(W, b, method="exact")
    scores, labels = idx.search(H, k=10)
    idx.save("lm.wol"); idx = wolindex.load("lm.wol")
    result = wolindex.train(W, b, H, labels, loss="spherical")   # O(d^2) per example
    ids = wolindex.sample(idx, H, temperature=0.8, top_p=0.9)    # from the candidates' softmax
"""
from ._version import __version__
from .build import build
from .engine.blas import set_blas_policy
from .index import Index, load
from .layer import OutputLayer
from .methods import METHODS
from .training import train
from .weights import load_layer, read_tensor

__all__ = ["Index", "METHODS", "OutputLayer", "__version__", "build", "load", "load_layer", "read_tensor", "sample",
           "set_blas_policy", "train"]


def __getattr__(name: str):
    """wolindex.sample, from wolindex.sampling, which loads on first use."""
    if name == "sample":
        from .sampling import sample

        return sample
    raise AttributeError(f"module 'wolindex' has no attribute {name!r}")
