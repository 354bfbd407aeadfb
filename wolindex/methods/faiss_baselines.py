"""FAISS MIPS baselines (faiss-flat, faiss-ivf, faiss-hnsw, faiss-ivfpq) behind the same build / search API.

The bias is folded in as an extra dimension ([W, b] against [H, 1]); FAISS returns k_factor * k candidates
per query and the engine rescores them exactly, so scores are exact logits as with every method.
faiss-hnsw searches with L2 distance after the MIPS -> L2 augmentation of Bachrach et al. (2014):
x' = [w, b, sqrt(phi^2 - |w|^2 - b^2)], q' = [h, 1, 0], phi = max |(w, b)|, so that the nearest x' in L2 is
the largest inner product. The FAISS index is saved inside the wolindex file as FAISS's own binary
serialisation (parsed by FAISS, never unpickled), and on loading checked against the layer and the saved state
(class, metric, size, width, lists) before it answers a query; every setting is bounded before FAISS sees it.
FAISS counts its own threads (faiss.omp_set_num_threads).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .._numeric import with_bias_column, with_one_column
from ..engine import rescore_topk
from ..params import BuildParams, SearchParams, check_int
from .base import Method, check_array, check_state_int
from .registry import register

C_INT_MAX = 2**31 - 1  # FAISS takes these settings as C ints
PQ_MIN_CLASSES = 16    # 4-bit codebooks: 16 centroids per sub-quantiser, trained on the rows


def _faiss():
    try:
        import faiss
    except ImportError:
        raise ImportError("the faiss-* methods need faiss-cpu: pip install 'wolindex[faiss]'") from None
    return faiss


def _train_and_add(index, X: np.ndarray, seed: int, verbose: bool, what: str) -> None:
    """Train an IVF index's k-means (seeded) on X, then add X."""
    index.cp.seed = seed
    index.verbose = verbose
    index.train(X)
    index.verbose = False
    _add_in_chunks(index, X, verbose, what)


def _at_most(name: str, value: int, limit: int, what: str) -> None:
    if value > limit:
        raise ValueError(f"{name}: at most {limit} ({what}), got {value}")


def _ivf_list_ids(index) -> np.ndarray:
    """The ids stored in an IVF index's inverted lists, concatenated."""
    faiss = _faiss()
    lists = index.invlists
    ids = [faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy() for i in range(index.nlist)]
    return np.concatenate(ids) if ids else np.zeros(0, np.int64)


def _add_in_chunks(index, X: np.ndarray, verbose: bool, what: str) -> None:
    from tqdm.auto import tqdm

    step = 16384
    for lo in tqdm(range(0, X.shape[0], step), desc=f"{what}: add", disable=not verbose, unit="chunk"):
        index.add(X[lo:lo + step])


@dataclass(frozen=True)
class FaissSearch(SearchParams):
    """k_factor (at most D): FAISS returns min(D, k_factor * k) candidates, all rescored exactly."""

    k_factor: int = 1

    def validate(self) -> None:
        super().validate()
        check_int("k_factor", self.k_factor, 1, C_INT_MAX)


@dataclass(frozen=True)
class FaissIVFSearch(FaissSearch):
    """n_probe (also accepted as FAISS's name, nprobe): inverted lists scanned per query (at most the index's
    nlist)."""

    ALIASES = {"nprobe": "n_probe"}
    n_probe: int = 8

    def validate(self) -> None:
        super().validate()
        check_int("n_probe", self.n_probe, 1, C_INT_MAX)


@dataclass(frozen=True)
class FaissHNSWSearch(FaissSearch):
    """ef_search: size of HNSW's candidate queue, at most D (at least k_factor * k is used)."""

    ef_search: int = 64

    def validate(self) -> None:
        super().validate()
        check_int("ef_search", self.ef_search, 1, C_INT_MAX)


@dataclass(frozen=True)
class FaissIVFBuild(BuildParams):
    """nlist: inverted lists, at most D (0: 4 * sqrt(D)); seed: k-means seed."""

    nlist: int = 0
    seed: int = 0

    def validate(self) -> None:
        check_int("nlist", self.nlist, 0, C_INT_MAX)
        check_int("seed", self.seed, 0, C_INT_MAX)


@dataclass(frozen=True)
class FaissHNSWBuild(BuildParams):
    """m: graph degree (at most D); ef_construction: queue size while building."""

    m: int = 32
    ef_construction: int = 100

    def validate(self) -> None:
        check_int("m", self.m, 2, C_INT_MAX)
        check_int("ef_construction", self.ef_construction, 1, C_INT_MAX)


@dataclass(frozen=True)
class FaissIVFPQBuild(FaissIVFBuild):
    """IVF with 4-bit fast-scan product quantisation; m: sub-quantisers, at most d + 1 (0: one per 2
    dimensions)."""

    m: int = 0

    def validate(self) -> None:
        super().validate()
        check_int("m", self.m, 0, C_INT_MAX)


class _FaissMethod(Method):
    """Shared plumbing: holds the deserialised FAISS index, checked against the layer and the state;
    search = FAISS candidates + exact rescoring."""

    Search = FaissSearch
    supports_spherical = True
    faiss_class: ClassVar[str]              # the FAISS index class the method builds
    faiss_metric: ClassVar[str] = "METRIC_INNER_PRODUCT"
    extra_columns: ClassVar[int] = 1        # FAISS rows are [w, b] (+ the MIPS -> L2 column for HNSW)

    def __init__(self, layer, arrays=None, state=None):
        """From built (or loaded) arrays: FAISS parses the blob (never unpickled), then its type, metric,
        size and width are checked against the layer and the state, so a damaged or foreign FAISS index
        is refused here rather than handing out class ids the layer does not have."""
        super().__init__(arrays, state)
        blob = check_array(self.arrays, "faiss_index", np.uint8, (None,))
        width = self._width(layer)
        faiss = _faiss()
        try:
            index = faiss.deserialize_index(blob)
        except (RuntimeError, MemoryError) as err:
            raise ValueError(f"arrays: faiss_index is not a readable FAISS index ({err})") from None
        if (type(index), index.metric_type) != (getattr(faiss, self.faiss_class), getattr(faiss, self.faiss_metric)):
            raise ValueError(f"arrays: faiss_index is a {type(index).__name__} with metric {index.metric_type}; "
                             f"method {self.name!r} builds a {self.faiss_class} with {self.faiss_metric}")
        if index.ntotal != layer.n_classes or index.d != width or not index.is_trained:
            raise ValueError(f"arrays: faiss_index holds {index.ntotal} vectors of width {index.d} (trained: "
                             f"{index.is_trained}); this layer needs {layer.n_classes} of width {width}, trained")
        self._check_faiss(index, layer)
        self.faiss_index = index

    @classmethod
    def restore(cls, layer, arrays, state):
        return cls(layer, arrays, state)

    @classmethod
    def _from_faiss(cls, index, layer, state: dict) -> "_FaissMethod":
        return cls(layer, {"faiss_index": _faiss().serialize_index(index)}, state)

    def _width(self, layer) -> int:
        """The width of the FAISS rows for this layer, after checking the state's values."""
        width = check_state_int(self.state, "width", 1, C_INT_MAX)
        if width != layer.dim + self.extra_columns:
            raise ValueError(f"state: width must be {layer.dim + self.extra_columns} (the layer's d + "
                             f"{self.extra_columns}), got {width}")
        return width

    def _check_faiss(self, index, layer) -> None:
        """Method-specific checks of the deserialised index (its class, size and width already match)."""

    def _queries(self, H: np.ndarray) -> np.ndarray:
        return with_one_column(H, self.state["width"])

    def _faiss_params(self, params):
        return None

    def check_search(self, params) -> None:
        """Refuse settings beyond what this index has (rather than letting FAISS clip or fail on them)."""
        _at_most("k_factor", params.k_factor, self.faiss_index.ntotal, "D, the number of classes")

    def search(self, layer, H, k, params):
        """Candidates by largest inner product (and, for spherical layers, also by most negative: the top
        squares come from both ends), rescored exactly."""
        self.check_search(params)
        n_cand = min(layer.n_classes, k * params.k_factor)
        Q = self._queries(H)
        _, cand = self.faiss_index.search(Q, n_cand, params=self._faiss_params(params))
        if layer.square:
            _, negative = self.faiss_index.search(-Q, n_cand, params=self._faiss_params(params))
            cand = np.concatenate([cand, negative], axis=1)
        return rescore_topk(layer.W, layer.b, H, k, cand, engine=params.engine, square=layer.square)


class _FaissIVFMethod(_FaissMethod):
    """IVF plumbing: nlist in the state, a flat inner-product quantiser with nlist centroids, and inverted
    lists holding every class id exactly once."""

    Search = FaissIVFSearch
    lists_class: ClassVar[str]

    @staticmethod
    def _nlist(layer, params) -> int:
        if params.nlist == 0:
            return min(layer.n_classes, int(4 * np.sqrt(layer.n_classes)))
        _at_most("nlist", params.nlist, layer.n_classes, "D, the number of classes")
        return params.nlist

    def _check_faiss(self, index, layer) -> None:
        faiss = _faiss()
        nlist = check_state_int(self.state, "nlist", 1, layer.n_classes)
        quantizer = faiss.downcast_index(index.quantizer)
        lists = faiss.downcast_InvertedLists(index.invlists)
        if (index.nlist != nlist or type(quantizer) is not faiss.IndexFlatIP or quantizer.d != index.d
                or quantizer.ntotal != nlist or type(lists) is not getattr(faiss, self.lists_class)
                or lists.nlist != nlist):
            raise ValueError(f"arrays: faiss_index's coarse quantiser or inverted lists do not match nlist={nlist} "
                             f"(a {type(quantizer).__name__} of {quantizer.ntotal} centroids, "
                             f"{type(lists).__name__} of {lists.nlist} lists)")
        if not np.array_equal(np.sort(_ivf_list_ids(index)), np.arange(layer.n_classes)):
            raise ValueError(f"arrays: faiss_index's inverted lists must hold each class id in [0, "
                             f"{layer.n_classes}) exactly once")

    def check_search(self, params) -> None:
        super().check_search(params)
        _at_most("n_probe", params.n_probe, self.faiss_index.nlist, "the index's nlist")

    def _faiss_params(self, params):
        return _faiss().SearchParametersIVF(nprobe=params.n_probe)

    def default_search(self):
        return {"n_probe": min(self.Search().n_probe, self.faiss_index.nlist)}

    def _grid(self, nprobes, k_factors):
        """Tuning grid of (n_probe, k_factor) pairs, each capped at its bound, without repeats."""
        D, nlist = self.faiss_index.ntotal, self.faiss_index.nlist
        pairs = dict.fromkeys((min(p, nlist), min(f, D)) for p in nprobes for f in k_factors)
        return [{"n_probe": p, "k_factor": f} for p, f in pairs]


@register
class FaissFlat(_FaissMethod):
    """faiss.IndexFlatIP: exact inner products by FAISS (the FAISS exact baseline)."""

    name = "faiss-flat"
    faiss_class = "IndexFlatIP"

    @classmethod
    def build(cls, layer, params, train, labels, verbose):
        faiss = _faiss()
        index = faiss.IndexFlatIP(layer.dim + 1)
        _add_in_chunks(index, with_bias_column(layer.W, layer.b), verbose, cls.name)
        return cls._from_faiss(index, layer, {"width": layer.dim + 1})


@register
class FaissIVF(_FaissIVFMethod):
    """faiss.IndexIVFFlat with inner product: k-means lists over [W, b], n_probe lists scanned."""

    name = "faiss-ivf"
    Build = FaissIVFBuild
    faiss_class = "IndexIVFFlat"
    lists_class = "ArrayInvertedLists"

    @classmethod
    def build(cls, layer, params, train, labels, verbose):
        faiss = _faiss()
        width = layer.dim + 1
        nlist = cls._nlist(layer, params)
        X = with_bias_column(layer.W, layer.b)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(width), width, nlist, faiss.METRIC_INNER_PRODUCT)
        _train_and_add(index, X, params.seed, verbose, cls.name)
        return cls._from_faiss(index, layer, {"width": width, "nlist": nlist})

    def tuning_grid(self, k):
        return self._grid((1, 2, 4, 8, 16, 32, 64, 128, 256), (1,))


@register
class FaissHNSW(_FaissMethod):
    """faiss.IndexHNSWFlat (L2) over the MIPS -> L2 augmented rows."""

    name = "faiss-hnsw"
    Build = FaissHNSWBuild
    Search = FaissHNSWSearch
    faiss_class = "IndexHNSWFlat"
    faiss_metric = "METRIC_L2"
    extra_columns = 2

    @classmethod
    def build(cls, layer, params, train, labels, verbose):
        faiss = _faiss()
        _at_most("m", params.m, layer.n_classes, "D, the number of classes")
        X = with_bias_column(layer.W, layer.b, layer.dim + 2)
        sq = (X[:, :-1].astype(np.float64) ** 2).sum(axis=1)
        X[:, -1] = np.sqrt(np.maximum(sq.max() - sq, 0.0))
        index = faiss.IndexHNSWFlat(layer.dim + 2, params.m)
        index.hnsw.efConstruction = params.ef_construction
        _add_in_chunks(index, X, verbose, cls.name)
        return cls._from_faiss(index, layer, {"width": layer.dim + 2})

    def _check_faiss(self, index, layer) -> None:
        faiss = _faiss()
        storage = faiss.downcast_index(index.storage)
        if type(storage) is not faiss.IndexFlatL2 or storage.d != index.d or storage.ntotal != index.ntotal:
            raise ValueError(f"arrays: faiss_index's storage is a {type(storage).__name__} of {storage.ntotal} "
                             f"vectors of width {storage.d}; expected an IndexFlatL2 of {index.ntotal} x {index.d}")

    def check_search(self, params) -> None:
        super().check_search(params)
        _at_most("ef_search", params.ef_search, self.faiss_index.ntotal, "D, the number of classes")

    def _faiss_params(self, params):
        return _faiss().SearchParametersHNSW(efSearch=params.ef_search)

    def default_search(self):
        return {"ef_search": min(self.Search().ef_search, self.faiss_index.ntotal)}

    def tuning_grid(self, k):
        efs = dict.fromkeys(min(e, self.faiss_index.ntotal) for e in (16, 32, 64, 128, 256, 512, 1024))
        return [{"ef_search": e, "k_factor": 1} for e in efs]


@register
class FaissIVFPQ(_FaissIVFMethod):
    """faiss.IndexIVFPQFastScan with inner product (4-bit codes, SIMD scanning), then exact reranking
    of k_factor * k candidates: the usual IVF-PQ + refine pipeline."""

    name = "faiss-ivfpq"
    Build = FaissIVFPQBuild
    faiss_class = "IndexIVFPQFastScan"
    lists_class = "BlockInvertedLists"

    @classmethod
    def build(cls, layer, params, train, labels, verbose):
        faiss = _faiss()
        if layer.n_classes < PQ_MIN_CLASSES:
            raise ValueError(f"W: method {cls.name!r} needs at least {PQ_MIN_CLASSES} classes to train its 4-bit "
                             f"codebooks, got {layer.n_classes}")
        width = layer.dim + 1
        _at_most("m", params.m, width, "d + 1, the width of [W, b]")
        m = params.m or (width + 1) // 2
        width = -(-width // m) * m  # PQ needs the width to be a multiple of m: pad with zeros
        nlist = cls._nlist(layer, params)
        X = with_bias_column(layer.W, layer.b, width)
        index = faiss.IndexIVFPQFastScan(faiss.IndexFlatIP(width), width, nlist, m, 4, faiss.METRIC_INNER_PRODUCT)
        _train_and_add(index, X, params.seed, verbose, cls.name)
        return cls._from_faiss(index, layer, {"width": width, "nlist": nlist, "m": m})

    def _width(self, layer) -> int:
        m = check_state_int(self.state, "m", 1, layer.dim + 1)
        width = check_state_int(self.state, "width", 1, C_INT_MAX)
        if width != -(-(layer.dim + 1) // m) * m:
            raise ValueError(f"state: width must be {-(-(layer.dim + 1) // m) * m} (the layer's d + 1 padded to a "
                             f"multiple of m={m}), got {width}")
        return width

    def _check_faiss(self, index, layer) -> None:
        super()._check_faiss(index, layer)
        pq = index.pq
        if pq.M != self.state["m"] or pq.nbits != 4 or pq.d != index.d:
            raise ValueError(f"arrays: faiss_index has {pq.M} sub-quantisers of {pq.nbits} bits over width {pq.d}; "
                             f"the state says m={self.state['m']} of 4 bits over width {index.d}")

    def tuning_grid(self, k):
        return self._grid((4, 8, 16, 32, 64, 128), (4, 10, 30))
