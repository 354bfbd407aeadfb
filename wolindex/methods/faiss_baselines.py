"""FAISS MIPS baselines (faiss-flat, faiss-ivf, faiss-hnsw, faiss-ivfpq, faiss-refine) behind the same build /
search API, and the plumbing every peer baseline shares (PeerMethod: hnswlib and scann build on it too).

The bias is folded in as an extra dimension ([W, b] against [H, 1]); the peer's index returns k_factor * k
candidates per query and the engine rescores them exactly, so scores are exact logits as with every method.
With whiten=True the rows are indexed as [w, b] @ T and the queries searched as [h, 1] @ T^-T, T = C^(1/2) of
the training queries' second moment (wolindex._numeric.whitening): inner products are unchanged, the peer sees
isotropic queries. faiss-hnsw searches with L2 distance after the MIPS -> L2 augmentation of Bachrach et al.
(2014): x' = [w, b, sqrt(phi^2 - |w|^2 - b^2)], q' = [h, 1, 0], phi = max |(w, b)|, so that the nearest x' in
L2 is the largest inner product. faiss-refine scans every class's quantised code (4-bit PQ fast-scan or 8-bit
scalar quantisation) and rescores the best exactly. The FAISS index is saved inside the wolindex file as
FAISS's own binary serialisation (parsed by FAISS, never unpickled), and on loading checked against the layer
and the saved state (class, metric, size, width, lists, codes) before it answers a query; every setting is
bounded before FAISS sees it. FAISS counts its own threads (faiss.omp_set_num_threads).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar

import numpy as np

from .._numeric import inverse_transpose, transform_columns, whitening, with_bias_column, with_one_column
from ..engine import rescore_topk
from ..params import BuildParams, SearchParams, check_int
from ..rows import as_float32_rows
from .base import Method, check_array, check_state_int
from .registry import register

C_INT_MAX = 2**31 - 1  # FAISS takes these settings as C ints
PQ_MIN_CLASSES = 16    # 4-bit codebooks: 16 centroids per sub-quantiser, trained on the rows
QUANTIZERS = {"pq4fs": "IndexPQFastScan", "sq8": "IndexScalarQuantizer"}  # faiss-refine's first stages
SQ_ALIGN = 16          # FAISS scans 8-bit codes with SIMD only when the width is a multiple of 16 (10x faster)


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
    add_in_chunks(lambda chunk, first: index.add(chunk), X, verbose, what)


def engine_threads() -> int:
    """The engine's thread count (numba.get_num_threads, which wolindex.contrib's set_threads sets), which the
    peers that take a thread count per call (hnswlib, ScaNN) use too."""
    import numba

    return numba.get_num_threads()


def at_most(name: str, value: int, limit: int, what: str) -> None:
    if value > limit:
        raise ValueError(f"{name}: at most {limit} ({what}), got {value}")


def padded_width(width: int, multiple: int) -> int:
    """width rounded up to a multiple of `multiple` (rows are zero-padded to it)."""
    return -(-width // multiple) * multiple


def check_padded_width(state: dict, layer, multiple: int, what: str) -> int:
    """state['width'], which must be the layer's d + 1 padded to a multiple of `multiple` (named by `what`)."""
    width = check_state_int(state, "width", 1, C_INT_MAX)
    if width != padded_width(layer.dim + 1, multiple):
        raise ValueError(f"state: width must be {padded_width(layer.dim + 1, multiple)} (the layer's d + 1 padded to "
                         f"a multiple of {what}), got {width}")
    return width


def _check_pq_width(state: dict, layer) -> int:
    """state['width'] of a PQ member: d + 1 padded to a multiple of state['m'] (in [1, d + 1])."""
    m = check_state_int(state, "m", 1, layer.dim + 1)
    return check_padded_width(state, layer, m, f"m={m}")


def _ivf_list_ids(index) -> np.ndarray:
    """The ids stored in an IVF index's inverted lists, concatenated."""
    faiss = _faiss()
    lists = index.invlists
    ids = [faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy() for i in range(index.nlist)]
    return np.concatenate(ids) if ids else np.zeros(0, np.int64)


def add_in_chunks(add: Callable[[np.ndarray, int], None], X: np.ndarray, verbose: bool, what: str) -> None:
    """add(chunk, id of its first row) for each block of 16384 rows of X, with a progress bar when verbose."""
    from tqdm.auto import tqdm

    step = 16384
    for lo in tqdm(range(0, X.shape[0], step), desc=f"{what}: add", disable=not verbose, unit="chunk"):
        add(X[lo:lo + step], lo)


def _pq_m(layer, params, name: str) -> int:
    """The number of 4-bit sub-quantisers a PQ build uses (params.m, 0: one per 2 columns of [W, b])."""
    if layer.n_classes < PQ_MIN_CLASSES:
        raise ValueError(f"W: method {name!r} needs at least {PQ_MIN_CLASSES} classes to train its 4-bit "
                         f"codebooks, got {layer.n_classes}")
    at_most("m", params.m, layer.dim + 1, "d + 1, the width of [W, b]")
    return params.m or (layer.dim + 2) // 2


@dataclass(frozen=True)
class PeerBuild(BuildParams):
    """whiten: index [w, b] @ T and search [h, 1] @ T^-T, T = C^(1/2) of the training queries' second moment
    C = E[[h, 1][h, 1]^T] (needs train); every inner product is unchanged, the peer's index sees isotropic
    queries."""

    whiten: bool = False

    def validate(self) -> None:
        if not isinstance(self.whiten, bool):
            raise TypeError(f"whiten: expected a bool, got {type(self.whiten).__name__}")


@dataclass(frozen=True)
class PeerSearch(SearchParams):
    """k_factor (at most D): the peer's index returns min(D, k_factor * k) candidates, all rescored exactly."""

    k_factor: int = 1

    def validate(self) -> None:
        super().validate()
        check_int("k_factor", self.k_factor, 1, C_INT_MAX)


class PeerMethod(Method):
    """A peer's index over the rows [w, b] (whitened when built so): subclasses find candidates for queries
    [h, 1] (candidates), which are rescored exactly; the whitening transform and the row width are checked
    against the layer and the state here."""

    Build = PeerBuild
    Search = PeerSearch
    supports_spherical = True
    extra_columns: ClassVar[int] = 1        # the peer's rows are [w, b] (+ the MIPS -> L2 column for faiss-hnsw)

    def __init__(self, layer, arrays=None, state=None):
        super().__init__(arrays, state)
        self.n_classes = layer.n_classes
        self.width = self._width(layer)
        self.row_transform = self._check_whitening(layer)
        try:
            self.query_transform = None if self.row_transform is None else inverse_transpose(self.row_transform)
        except ValueError as err:
            raise ValueError(f"arrays: {err}") from None

    @classmethod
    def restore(cls, layer, arrays, state):
        return cls(layer, arrays, state)

    @classmethod
    def _rows(cls, layer, params, train, width: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The rows to index, [W, b] (D, width) float32 zero-padded (whitened with params.whiten), and the
        arrays that keep the transform ({'whiten': T (d + 1, d + 1) float32} or none)."""
        if not params.whiten:
            return cls.indexed_rows(layer, width, None), {}
        if train is None:
            raise ValueError("whiten: needs training queries (train=H_train) to estimate their second moment")
        T = whitening(train)
        return cls.indexed_rows(layer, width, T), {"whiten": T}

    @staticmethod
    def indexed_rows(layer, width: int, T: np.ndarray | None) -> np.ndarray:
        """[W, b] (D, width) float32 zero-padded, times the row transform T (d + 1, d + 1) when given."""
        X = with_bias_column(as_float32_rows(layer.W), layer.b, width)
        return X if T is None else transform_columns(X, T)

    def _width(self, layer) -> int:
        """The width of the peer's rows for this layer, after checking the state's values."""
        width = check_state_int(self.state, "width", 1, C_INT_MAX)
        if width != layer.dim + self.extra_columns:
            raise ValueError(f"state: width must be {layer.dim + self.extra_columns} (the layer's d + "
                             f"{self.extra_columns}), got {width}")
        return width

    def _check_whitening(self, layer) -> np.ndarray | None:
        """The row transform T (d + 1, d + 1) float32 of a whitened index, None otherwise."""
        whiten = self.state.get("whiten", False)      # absent from files saved before whitening existed
        if not isinstance(whiten, bool):
            raise TypeError(f"state: whiten: expected a bool, got {type(whiten).__name__}")
        if whiten != ("whiten" in self.arrays):
            raise ValueError(f"arrays: whiten must be there exactly when state says whiten=true (it says {whiten})")
        if not whiten:
            return None
        return check_array(self.arrays, "whiten", np.float32, (layer.dim + 1, layer.dim + 1))

    def queries(self, H: np.ndarray) -> np.ndarray:
        """[H, 1] (N, width) float32 zero-padded, whitened like the rows."""
        Q = with_one_column(H, self.width)
        return Q if self.query_transform is None else transform_columns(Q, self.query_transform)

    def candidates(self, Q: np.ndarray, n_cand: int, params) -> np.ndarray:
        """(N, n_cand) integer class ids (-1: none) by the peer's index for queries Q from `queries`."""
        raise NotImplementedError

    def check_search(self, params) -> None:
        """Refuse settings beyond what this index has (rather than letting the peer clip or fail on them)."""
        at_most("k_factor", params.k_factor, self.n_classes, "D, the number of classes")

    def search(self, layer, H, k, params):
        """Candidates by largest inner product (and, for spherical layers, also by most negative: the top
        squares come from both ends), rescored exactly."""
        self.check_search(params)
        n_cand = min(layer.n_classes, k * params.k_factor)
        Q = self.queries(H)
        cand = self.candidates(Q, n_cand, params)
        if layer.square:
            cand = np.concatenate([cand, self.candidates(-Q, n_cand, params)], axis=1)
        return rescore_topk(layer.W, layer.b, H, k, cand, engine=params.engine, square=layer.square)


@dataclass(frozen=True)
class FaissIVFSearch(PeerSearch):
    """n_probe (also accepted as FAISS's name, nprobe): inverted lists scanned per query (at most the index's
    nlist)."""

    ALIASES = {"nprobe": "n_probe"}
    n_probe: int = 8

    def validate(self) -> None:
        super().validate()
        check_int("n_probe", self.n_probe, 1, C_INT_MAX)


@dataclass(frozen=True)
class FaissHNSWSearch(PeerSearch):
    """ef_search: size of HNSW's candidate queue, at most D (at least k_factor * k is used)."""

    ef_search: int = 64

    def validate(self) -> None:
        super().validate()
        check_int("ef_search", self.ef_search, 1, C_INT_MAX)


@dataclass(frozen=True)
class FaissRefineSearch(PeerSearch):
    """k_factor (at most D): the min(D, k_factor * k) best classes by their quantised codes are rescored."""

    k_factor: int = 10


@dataclass(frozen=True)
class FaissIVFBuild(PeerBuild):
    """nlist: inverted lists, at most D (0: 4 * sqrt(D)); seed: k-means seed."""

    nlist: int = 0
    seed: int = 0

    def validate(self) -> None:
        super().validate()
        check_int("nlist", self.nlist, 0, C_INT_MAX)
        check_int("seed", self.seed, 0, C_INT_MAX)


@dataclass(frozen=True)
class FaissHNSWBuild(PeerBuild):
    """m: graph degree (at most D); ef_construction: queue size while building."""

    m: int = 32
    ef_construction: int = 100

    def validate(self) -> None:
        super().validate()
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


@dataclass(frozen=True)
class FaissRefineBuild(PeerBuild):
    """quantizer: 'pq4fs' (faiss.IndexPQFastScan: 4-bit product quantisation scanned with SIMD; m: its
    sub-quantisers, at most d + 1, 0: one per 2 dimensions; seed: its k-means seed) or 'sq8'
    (faiss.IndexScalarQuantizer, 8 bits per dimension, rows zero-padded to a multiple of 16 for FAISS's SIMD
    scan; m and seed unused)."""

    quantizer: str = "pq4fs"
    m: int = 0
    seed: int = 0

    def validate(self) -> None:
        super().validate()
        if not isinstance(self.quantizer, str) or self.quantizer not in QUANTIZERS:
            raise ValueError(f"quantizer: expected one of {sorted(QUANTIZERS)}, got {self.quantizer!r}")
        check_int("m", self.m, 0, C_INT_MAX)
        check_int("seed", self.seed, 0, C_INT_MAX)


class _FaissMethod(PeerMethod):
    """Shared plumbing: holds the deserialised FAISS index, checked against the layer and the state;
    candidates by FAISS's search."""

    faiss_class: ClassVar[str]              # the FAISS index class the method builds
    faiss_metric: ClassVar[str] = "METRIC_INNER_PRODUCT"

    def __init__(self, layer, arrays=None, state=None):
        """From built (or loaded) arrays: FAISS parses the blob (never unpickled), then its type, metric,
        size and width are checked against the layer and the state, so a damaged or foreign FAISS index
        is refused here rather than handing out class ids the layer does not have."""
        super().__init__(layer, arrays, state)
        blob = check_array(self.arrays, "faiss_index", np.uint8, (None,))
        faiss = _faiss()
        try:
            index = faiss.deserialize_index(blob)
        except (RuntimeError, MemoryError) as err:
            raise ValueError(f"arrays: faiss_index is not a readable FAISS index ({err})") from None
        expected = self._faiss_class()
        if (type(index), index.metric_type) != (getattr(faiss, expected), getattr(faiss, self.faiss_metric)):
            raise ValueError(f"arrays: faiss_index is a {type(index).__name__} with metric {index.metric_type}; "
                             f"method {self.name!r} builds a {expected} with {self.faiss_metric}")
        if index.ntotal != layer.n_classes or index.d != self.width or not index.is_trained:
            raise ValueError(f"arrays: faiss_index holds {index.ntotal} vectors of width {index.d} (trained: "
                             f"{index.is_trained}); this layer needs {layer.n_classes} of width {self.width}, "
                             f"trained")
        self._check_faiss(index, layer)
        self.faiss_index = index

    @classmethod
    def _from_faiss(cls, index, layer, state: dict, arrays: dict[str, np.ndarray]) -> "_FaissMethod":
        return cls(layer, {"faiss_index": _faiss().serialize_index(index), **arrays}, state)

    @classmethod
    def _add(cls, index, X: np.ndarray, verbose: bool) -> None:
        add_in_chunks(lambda chunk, first: index.add(chunk), X, verbose, cls.name)

    def _faiss_class(self) -> str:
        return self.faiss_class

    def _check_faiss(self, index, layer) -> None:
        """Method-specific checks of the deserialised index (its class, size and width already match)."""

    def _faiss_params(self, params):
        return None

    def candidates(self, Q, n_cand, params):
        return self.faiss_index.search(Q, n_cand, params=self._faiss_params(params))[1]


class _FaissIVFMethod(_FaissMethod):
    """IVF plumbing: nlist in the state, a flat inner-product quantiser with nlist centroids, and inverted
    lists holding every class id exactly once."""

    Search = FaissIVFSearch
    lists_class: ClassVar[str]

    @staticmethod
    def _nlist(layer, params) -> int:
        if params.nlist == 0:
            return min(layer.n_classes, int(4 * np.sqrt(layer.n_classes)))
        at_most("nlist", params.nlist, layer.n_classes, "D, the number of classes")
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
        at_most("n_probe", params.n_probe, self.faiss_index.nlist, "the index's nlist")

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
        X, arrays = cls._rows(layer, params, train, layer.dim + 1)
        index = faiss.IndexFlatIP(layer.dim + 1)
        cls._add(index, X, verbose)
        return cls._from_faiss(index, layer, {"width": layer.dim + 1, "whiten": params.whiten}, arrays)


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
        X, arrays = cls._rows(layer, params, train, width)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(width), width, nlist, faiss.METRIC_INNER_PRODUCT)
        _train_and_add(index, X, params.seed, verbose, cls.name)
        return cls._from_faiss(index, layer, {"width": width, "nlist": nlist, "whiten": params.whiten}, arrays)

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
        at_most("m", params.m, layer.n_classes, "D, the number of classes")
        X, arrays = cls._rows(layer, params, train, layer.dim + 2)
        sq = (X[:, :-1].astype(np.float64) ** 2).sum(axis=1)
        X[:, -1] = np.sqrt(np.maximum(sq.max() - sq, 0.0))
        index = faiss.IndexHNSWFlat(layer.dim + 2, params.m)
        index.hnsw.efConstruction = params.ef_construction
        cls._add(index, X, verbose)
        return cls._from_faiss(index, layer, {"width": layer.dim + 2, "whiten": params.whiten}, arrays)

    def _check_faiss(self, index, layer) -> None:
        faiss = _faiss()
        storage = faiss.downcast_index(index.storage)
        if type(storage) is not faiss.IndexFlatL2 or storage.d != index.d or storage.ntotal != index.ntotal:
            raise ValueError(f"arrays: faiss_index's storage is a {type(storage).__name__} of {storage.ntotal} "
                             f"vectors of width {storage.d}; expected an IndexFlatL2 of {index.ntotal} x {index.d}")

    def check_search(self, params) -> None:
        super().check_search(params)
        at_most("ef_search", params.ef_search, self.faiss_index.ntotal, "D, the number of classes")

    def _faiss_params(self, params):
        return _faiss().SearchParametersHNSW(efSearch=params.ef_search)

    def default_search(self):
        return {"ef_search": min(self.Search().ef_search, self.faiss_index.ntotal)}

    def tuning_grid(self, k):
        efs = dict.fromkeys(min(e, self.faiss_index.ntotal) for e in (16, 32, 64, 128, 256, 512, 1024))
        return [{"ef_search": e, "k_factor": 1} for e in efs]


def _check_pq(index, m: int) -> None:
    """A deserialised 4-bit PQ member (IVF or flat fast-scan) must have m sub-quantisers over its width."""
    pq = index.pq
    if pq.M != m or pq.nbits != 4 or pq.d != index.d:
        raise ValueError(f"arrays: faiss_index has {pq.M} sub-quantisers of {pq.nbits} bits over width {pq.d}; "
                         f"the state says m={m} of 4 bits over width {index.d}")


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
        m = _pq_m(layer, params, cls.name)
        width = padded_width(layer.dim + 1, m)  # PQ needs the width to be a multiple of m: pad with zeros
        nlist = cls._nlist(layer, params)
        X, arrays = cls._rows(layer, params, train, width)
        index = faiss.IndexIVFPQFastScan(faiss.IndexFlatIP(width), width, nlist, m, 4, faiss.METRIC_INNER_PRODUCT)
        _train_and_add(index, X, params.seed, verbose, cls.name)
        state = {"width": width, "nlist": nlist, "m": m, "whiten": params.whiten}
        return cls._from_faiss(index, layer, state, arrays)

    def _width(self, layer) -> int:
        return _check_pq_width(self.state, layer)

    def _check_faiss(self, index, layer) -> None:
        super()._check_faiss(index, layer)
        _check_pq(index, self.state["m"])

    def tuning_grid(self, k):
        return self._grid((4, 8, 16, 32, 64, 128), (4, 10, 30))


@register
class FaissRefine(_FaissMethod):
    """A flat quantised scan of every class (faiss.IndexPQFastScan, 4-bit PQ, or faiss.IndexScalarQuantizer,
    8-bit) with inner product, then exact rescoring of its k_factor * k best: quantise + refine without lists."""

    name = "faiss-refine"
    Build = FaissRefineBuild
    Search = FaissRefineSearch

    @classmethod
    def build(cls, layer, params, train, labels, verbose):
        faiss = _faiss()
        if params.quantizer == "sq8":
            state = {"quantizer": "sq8", "width": padded_width(layer.dim + 1, SQ_ALIGN)}
            index = faiss.IndexScalarQuantizer(state["width"], faiss.ScalarQuantizer.QT_8bit,
                                               faiss.METRIC_INNER_PRODUCT)
        else:
            m = _pq_m(layer, params, cls.name)
            state = {"quantizer": "pq4fs", "width": padded_width(layer.dim + 1, m), "m": m}
            index = faiss.IndexPQFastScan(state["width"], m, 4, faiss.METRIC_INNER_PRODUCT)
            index.pq.cp.seed = params.seed
        X, arrays = cls._rows(layer, params, train, state["width"])
        index.train(X)
        cls._add(index, X, verbose)
        return cls._from_faiss(index, layer, {**state, "whiten": params.whiten}, arrays)

    def _quantizer(self) -> str:
        quantizer = self.state.get("quantizer")
        if not isinstance(quantizer, str) or quantizer not in QUANTIZERS:
            raise ValueError(f"state: quantizer must be one of {sorted(QUANTIZERS)}, got {quantizer!r}")
        return quantizer

    def _faiss_class(self) -> str:
        return QUANTIZERS[self._quantizer()]

    def _width(self, layer) -> int:
        if self._quantizer() == "pq4fs":
            return _check_pq_width(self.state, layer)
        return check_padded_width(self.state, layer, SQ_ALIGN, f"{SQ_ALIGN}, for FAISS's SIMD scan")

    def _check_faiss(self, index, layer) -> None:
        if self._quantizer() == "pq4fs":
            _check_pq(index, self.state["m"])
            return
        qtype = _faiss().ScalarQuantizer.QT_8bit
        if index.sq.qtype != qtype or index.sq.d != index.d:
            raise ValueError(f"arrays: faiss_index's scalar quantiser has type {index.sq.qtype} over width "
                             f"{index.sq.d}; expected QT_8bit ({qtype}) over width {index.d}")

    def default_search(self):
        return {"k_factor": min(self.Search().k_factor, self.n_classes)}

    def tuning_grid(self, k):
        return [{"k_factor": f} for f in dict.fromkeys(min(f, self.n_classes) for f in (1, 2, 4, 10, 30, 100))]
