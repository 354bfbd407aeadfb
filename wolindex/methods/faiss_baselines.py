"""FAISS MIPS baselines (faiss-flat, faiss-ivf, faiss-hnsw, faiss-ivfpq) behind the same build / search API.

The bias is folded in as an extra dimension ([W, b] against [H, 1]); FAISS returns k_factor * k candidates
per query and the engine rescores them exactly, so scores are exact logits as with every method.
faiss-hnsw searches with L2 distance after the MIPS -> L2 augmentation of Bachrach et al. (2014):
x' = [w, b, sqrt(phi^2 - |w|^2 - b^2)], q' = [h, 1, 0], phi = max |(w, b)|, so that the nearest x' in L2 is
the largest inner product. The FAISS index is saved inside the wolindex file as FAISS's own binary
serialisation (parsed by FAISS, never unpickled). FAISS counts its own threads (faiss.omp_set_num_threads).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..engine import rescore_topk
from ..params import BuildParams, SearchParams, check_int
from .base import Method
from .registry import register


def _faiss():
    try:
        import faiss
    except ImportError:
        raise ImportError("the faiss-* methods need faiss-cpu: pip install 'wolindex[faiss]'") from None
    return faiss


def with_bias_column(W: np.ndarray, b: np.ndarray, width: int | None = None) -> np.ndarray:
    """[W, b] (D, d + 1) float32, zero-padded on the right to `width` columns when given."""
    out = np.zeros((W.shape[0], width or W.shape[1] + 1), np.float32)
    out[:, :W.shape[1]] = W
    out[:, W.shape[1]] = b
    return out


def with_one_column(H: np.ndarray, width: int | None = None) -> np.ndarray:
    """[H, 1] (N, d + 1) float32, zero-padded on the right to `width` columns when given."""
    out = np.zeros((H.shape[0], width or H.shape[1] + 1), np.float32)
    out[:, :H.shape[1]] = H
    out[:, H.shape[1]] = 1.0
    return out


def _train_and_add(index, X: np.ndarray, seed: int, verbose: bool, what: str) -> None:
    """Train an IVF index's k-means (seeded) on X, then add X."""
    index.cp.seed = seed
    index.verbose = verbose
    index.train(X)
    index.verbose = False
    _add_in_chunks(index, X, verbose, what)


def _add_in_chunks(index, X: np.ndarray, verbose: bool, what: str) -> None:
    from tqdm.auto import tqdm

    step = 16384
    for lo in tqdm(range(0, X.shape[0], step), desc=f"{what}: add", disable=not verbose, unit="chunk"):
        index.add(X[lo:lo + step])


@dataclass(frozen=True)
class FaissSearch(SearchParams):
    """k_factor: FAISS returns k_factor * k candidates (at most D), all rescored exactly."""

    k_factor: int = 1

    def validate(self) -> None:
        super().validate()
        check_int("k_factor", self.k_factor, 1)


@dataclass(frozen=True)
class FaissIVFSearch(FaissSearch):
    """nprobe: inverted lists scanned per query."""

    nprobe: int = 8

    def validate(self) -> None:
        super().validate()
        check_int("nprobe", self.nprobe, 1)


@dataclass(frozen=True)
class FaissHNSWSearch(FaissSearch):
    """ef_search: size of HNSW's candidate queue (at least k_factor * k is used)."""

    ef_search: int = 64

    def validate(self) -> None:
        super().validate()
        check_int("ef_search", self.ef_search, 1)


@dataclass(frozen=True)
class FaissIVFBuild(BuildParams):
    """nlist: inverted lists (0: 4 * sqrt(D)); seed: k-means seed."""

    nlist: int = 0
    seed: int = 0

    def validate(self) -> None:
        check_int("nlist", self.nlist, 0)
        check_int("seed", self.seed, 0)


@dataclass(frozen=True)
class FaissHNSWBuild(BuildParams):
    """m: graph degree; ef_construction: queue size while building."""

    m: int = 32
    ef_construction: int = 100

    def validate(self) -> None:
        check_int("m", self.m, 2)
        check_int("ef_construction", self.ef_construction, 1)


@dataclass(frozen=True)
class FaissIVFPQBuild(FaissIVFBuild):
    """IVF with 4-bit fast-scan product quantisation; m: sub-quantisers (0: one per 2 dimensions)."""

    m: int = 0

    def validate(self) -> None:
        super().validate()
        check_int("m", self.m, 0)


class _FaissMethod(Method):
    """Shared plumbing: holds the deserialised FAISS index; search = FAISS candidates + exact rescoring."""

    Search = FaissSearch
    supports_spherical = True

    def __init__(self, arrays=None, state=None):
        super().__init__(arrays, state)
        self.faiss_index = _faiss().deserialize_index(self.arrays["faiss_index"])

    @classmethod
    def _from_faiss(cls, index, state: dict) -> "_FaissMethod":
        return cls({"faiss_index": _faiss().serialize_index(index)}, state)

    def _queries(self, H: np.ndarray) -> np.ndarray:
        return with_one_column(H, self.state["width"])

    def _faiss_params(self, params):
        return None

    def search(self, layer, H, k, params):
        """Candidates by largest inner product (and, for spherical layers, also by most negative: the top
        squares come from both ends), rescored exactly."""
        n_cand = min(layer.n_classes, k * params.k_factor)
        Q = self._queries(H)
        _, cand = self.faiss_index.search(Q, n_cand, params=self._faiss_params(params))
        if layer.square:
            _, negative = self.faiss_index.search(-Q, n_cand, params=self._faiss_params(params))
            cand = np.concatenate([cand, negative], axis=1)
        return rescore_topk(layer.W, layer.b, H, k, cand, engine=params.engine, square=layer.square)

    def tuning_grid(self, k):
        return [{"k_factor": f} for f in (1, 2, 4, 8)]


@register
class FaissFlat(_FaissMethod):
    """faiss.IndexFlatIP: exact inner products by FAISS (the FAISS exact baseline)."""

    name = "faiss-flat"

    @classmethod
    def build(cls, layer, params, train, labels, verbose):
        faiss = _faiss()
        index = faiss.IndexFlatIP(layer.dim + 1)
        _add_in_chunks(index, with_bias_column(layer.W, layer.b), verbose, cls.name)
        return cls._from_faiss(index, {"width": layer.dim + 1})

    def tuning_grid(self, k):
        return [{}]


@register
class FaissIVF(_FaissMethod):
    """faiss.IndexIVFFlat with inner product: k-means lists over [W, b], nprobe lists scanned."""

    name = "faiss-ivf"
    Build = FaissIVFBuild
    Search = FaissIVFSearch

    @classmethod
    def build(cls, layer, params, train, labels, verbose):
        faiss = _faiss()
        width = layer.dim + 1
        nlist = params.nlist or int(4 * np.sqrt(layer.n_classes))
        X = with_bias_column(layer.W, layer.b)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(width), width, nlist, faiss.METRIC_INNER_PRODUCT)
        _train_and_add(index, X, params.seed, verbose, cls.name)
        return cls._from_faiss(index, {"width": width, "nlist": nlist})

    def _faiss_params(self, params):
        return _faiss().SearchParametersIVF(nprobe=params.nprobe)

    def tuning_grid(self, k):
        return [{"nprobe": p, "k_factor": 1} for p in (1, 2, 4, 8, 16, 32, 64, 128, 256)]


@register
class FaissHNSW(_FaissMethod):
    """faiss.IndexHNSWFlat (L2) over the MIPS -> L2 augmented rows."""

    name = "faiss-hnsw"
    Build = FaissHNSWBuild
    Search = FaissHNSWSearch

    @classmethod
    def build(cls, layer, params, train, labels, verbose):
        faiss = _faiss()
        X = with_bias_column(layer.W, layer.b, layer.dim + 2)
        sq = (X[:, :-1].astype(np.float64) ** 2).sum(axis=1)
        X[:, -1] = np.sqrt(np.maximum(sq.max() - sq, 0.0))
        index = faiss.IndexHNSWFlat(layer.dim + 2, params.m)
        index.hnsw.efConstruction = params.ef_construction
        _add_in_chunks(index, X, verbose, cls.name)
        return cls._from_faiss(index, {"width": layer.dim + 2})

    def _faiss_params(self, params):
        return _faiss().SearchParametersHNSW(efSearch=params.ef_search)

    def tuning_grid(self, k):
        return [{"ef_search": e, "k_factor": 1} for e in (16, 32, 64, 128, 256, 512, 1024)]


@register
class FaissIVFPQ(_FaissMethod):
    """faiss.IndexIVFPQFastScan with inner product (4-bit codes, SIMD scanning), then exact reranking
    of k_factor * k candidates: the usual IVF-PQ + refine pipeline."""

    name = "faiss-ivfpq"
    Build = FaissIVFPQBuild
    Search = FaissIVFSearch

    @classmethod
    def build(cls, layer, params, train, labels, verbose):
        faiss = _faiss()
        width = layer.dim + 1
        m = params.m or (width + 1) // 2
        width = -(-width // m) * m  # PQ needs the width to be a multiple of m: pad with zeros
        nlist = params.nlist or int(4 * np.sqrt(layer.n_classes))
        X = with_bias_column(layer.W, layer.b, width)
        index = faiss.IndexIVFPQFastScan(faiss.IndexFlatIP(width), width, nlist, m, 4, faiss.METRIC_INNER_PRODUCT)
        _train_and_add(index, X, params.seed, verbose, cls.name)
        return cls._from_faiss(index, {"width": width, "nlist": nlist, "m": m})

    def _faiss_params(self, params):
        return _faiss().SearchParametersIVF(nprobe=params.nprobe)

    def tuning_grid(self, k):
        return [{"nprobe": p, "k_factor": f} for p in (4, 8, 16, 32, 64, 128) for f in (4, 10, 30)]
