"""hnswlib's HNSW graph (Malkov & Yashunin 2018) in inner-product space as a baseline (method 'hnswlib').

The rows are [w, b] (whitened with whiten=True) against queries [h, 1]; hnswlib returns k_factor * k
candidates per query, rescored exactly. The graph is saved as plain arrays taken from hnswlib's own state
(the dict of Index.__getstate__, never pickled): the level-0 block of each class (its links, its row, its
label), the links of the upper levels and each class's level. hnswlib copies such arrays in without checking
them, so on loading every size, link, level and label is checked against the layer first: a damaged or
crafted file is refused rather than letting hnswlib read past its memory or return a class the layer lacks.
Searches use the engine's thread count (numba.get_num_threads, which wolindex.contrib's set_threads sets).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from ..params import check_int
from .base import check_array, check_state_int
from .faiss_baselines import (C_INT_MAX, PeerBuild, PeerMethod, PeerSearch, add_in_chunks, at_most,
                              engine_threads)
from .registry import register

HNSW_MAX_M = 10000     # hnswlib caps m here (with a warning) rather than refusing it
HNSW_MAX_LEVEL = 255   # levels are drawn with P(level >= l) = m^-l: far out of reach


def _hnswlib():
    try:
        import hnswlib
    except ImportError:
        raise ImportError("the hnswlib method needs hnswlib: pip install 'wolindex[hnswlib]'") from None
    return hnswlib


@dataclass(frozen=True)
class HnswlibBuild(PeerBuild):
    """m (also accepted as hnswlib's name, M): graph degree in [2, 10000], at most D (level 0 keeps 2 * m
    links); ef_construction: queue size while building (at least m is used); seed: seed of the random levels
    (a build on several threads is not bit-reproducible)."""

    ALIASES = {"M": "m"}
    m: int = 16
    ef_construction: int = 200
    seed: int = 0

    def validate(self) -> None:
        super().validate()
        check_int("m", self.m, 2, HNSW_MAX_M)
        check_int("ef_construction", self.ef_construction, 1, C_INT_MAX)
        check_int("seed", self.seed, 0, C_INT_MAX)


@dataclass(frozen=True)
class HnswlibSearch(PeerSearch):
    """ef (also accepted as ef_search): size of HNSW's candidate queue, at most D (at least k_factor * k is
    used)."""

    ALIASES = {"ef_search": "ef"}
    ef: int = 64

    def validate(self) -> None:
        super().validate()
        check_int("ef", self.ef, 1, C_INT_MAX)


def _check_links(lists: np.ndarray, capacity: int, n_classes: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """lists (r, capacity + 1) uint32, each row a link count then `capacity` slots: the links in use, flat,
    and the (r, capacity) mask of the slots in use. Counts above capacity (or with hnswlib's deletion mark)
    and links past the layer are refused."""
    count = lists[:, 0]
    if count.size and int(count.max()) > capacity:
        raise ValueError(f"arrays: {what} holds a link count of {int(count.max())}, above the {capacity} slots")
    used = np.arange(capacity) < count[:, None]
    links = lists[:, 1:][used]
    if links.size and int(links.max()) >= n_classes:
        raise ValueError(f"arrays: {what} links to class {int(links.max())}; the layer has {n_classes}")
    return links, used


def _check_level0(level0: np.ndarray, layout: dict, n_classes: int, width: int) -> np.ndarray:
    """The labels (D,) uint64 of hnswlib's level-0 block (D, bytes per class): links, row and label of each
    class, checked (links in range, a finite row, every class labelled exactly once)."""
    links_end, label_at = layout["offset_data"], layout["label_offset"]
    _check_links(np.ascontiguousarray(level0[:, :links_end]).view(np.uint32), layout["max_M0"], n_classes,
                 "level0")
    if not np.isfinite(np.ascontiguousarray(level0[:, links_end:links_end + 4 * width]).view(np.float32)).all():
        raise ValueError("arrays: level0 holds NaN or Inf in its rows")
    labels = np.ascontiguousarray(level0[:, label_at:label_at + 8]).view(np.uint64)[:, 0]
    if not np.array_equal(np.sort(labels), np.arange(n_classes, dtype=np.uint64)):
        raise ValueError(f"arrays: level0's labels must hold each class id in [0, {n_classes}) exactly once")
    return labels


def _check_upper_links(links: np.ndarray, levels: np.ndarray, capacity: int) -> None:
    """links (sum(levels), capacity + 1) uint32: class c's lists for its levels 1..levels[c], in class order.
    A link at level l must reach a class that has level l (hnswlib reads that class's list there)."""
    owner_start = np.repeat(np.cumsum(levels) - levels, levels)
    level_of_row = np.arange(links.shape[0]) - owner_start + 1
    targets, used = _check_links(links, capacity, levels.shape[0], "links")
    if np.any(levels[targets] < np.broadcast_to(level_of_row[:, None], used.shape)[used]):
        raise ValueError("arrays: links reach a class on a level above that class's own")


def _layout(hnswlib, state: dict, width: int) -> dict:
    """hnswlib's layout values (bytes per class, offsets, degrees) for the state's m and ef_construction, read
    from an empty index hnswlib makes with them."""
    m = check_state_int(state, "m", 2, HNSW_MAX_M)
    ef_construction = check_state_int(state, "ef_construction", 1, C_INT_MAX)
    seed = check_state_int(state, "seed", 0, C_INT_MAX)
    empty = hnswlib.Index(space="ip", dim=width)
    empty.init_index(max_elements=1, M=m, ef_construction=ef_construction, random_seed=seed)
    return empty.__getstate__()[0]


def _graph(hnswlib, n_classes: int, width: int, state: dict, arrays: dict):
    """The hnswlib.Index made from the checked arrays and state."""
    layout = _layout(hnswlib, state, width)
    entry = check_state_int(state, "entry_point", 0, n_classes - 1)
    level0 = check_array(arrays, "level0", np.uint8, (n_classes, layout["size_data_per_element"]))
    levels = check_array(arrays, "levels", np.int32, (n_classes,))
    if levels.min() < 0 or levels.max() > HNSW_MAX_LEVEL:
        raise ValueError(f"arrays: levels must lie in [0, {HNSW_MAX_LEVEL}], got {levels.min()} .. {levels.max()}")
    if levels[entry] != levels.max():
        raise ValueError(f"state: entry_point {entry} is on level {levels[entry]}, not the top one ({levels.max()})")
    links = check_array(arrays, "links", np.uint8, (int(levels.sum(dtype=np.int64)), layout["size_links_per_element"]))
    labels = _check_level0(level0, layout, n_classes, width)
    _check_upper_links(np.ascontiguousarray(links).view(np.uint32), levels, layout["max_M"])
    return hnswlib.Index({
        **layout, "max_elements": n_classes, "cur_element_count": n_classes, "ep_added": True,
        "max_level": int(levels.max()), "enterpoint_node": entry, "has_deletions": False,
        "label_lookup_external": labels, "label_lookup_internal": np.arange(n_classes, dtype=np.uint32),
        "element_levels": np.ascontiguousarray(levels),
        "data_level0": np.ascontiguousarray(level0).view(np.int8).ravel(),
        "link_lists": np.ascontiguousarray(links).view(np.int8).ravel()})


@register
class Hnswlib(PeerMethod):
    """hnswlib.Index('ip') over [W, b]: HNSW with inner products, ef-bounded search, exact rescoring."""

    name = "hnswlib"
    Build = HnswlibBuild
    Search = HnswlibSearch

    def __init__(self, layer, arrays=None, state=None):
        super().__init__(layer, arrays, state)
        self.graph = _graph(_hnswlib(), layer.n_classes, self.width, self.state, self.arrays)
        self._lock = threading.Lock()   # ef is the graph's, not the call's

    @classmethod
    def build(cls, layer, params, train, labels, verbose):
        hnswlib = _hnswlib()
        at_most("m", params.m, layer.n_classes, "D, the number of classes")
        width = layer.dim + 1
        X, arrays = cls._rows(layer, params, train, width)
        graph = hnswlib.Index(space="ip", dim=width)
        graph.init_index(max_elements=layer.n_classes, M=params.m, ef_construction=params.ef_construction,
                         random_seed=params.seed)
        threads = engine_threads()
        add_in_chunks(lambda chunk, first: graph.add_items(chunk, np.arange(first, first + len(chunk)),
                                                           num_threads=threads), X, verbose, cls.name)
        saved = graph.__getstate__()[0]
        arrays.update(level0=saved["data_level0"].view(np.uint8).reshape(layer.n_classes, -1),
                      links=saved["link_lists"].view(np.uint8).reshape(-1, saved["size_links_per_element"]),
                      levels=saved["element_levels"].astype(np.int32))
        state = {"width": width, "m": params.m, "ef_construction": params.ef_construction, "seed": params.seed,
                 "entry_point": int(saved["enterpoint_node"]), "whiten": params.whiten}
        return cls(layer, arrays, state)

    def check_search(self, params) -> None:
        super().check_search(params)
        at_most("ef", params.ef, self.n_classes, "D, the number of classes")

    def candidates(self, Q, n_cand, params):
        with self._lock:
            self.graph.set_ef(params.ef)
            try:
                labels, _ = self.graph.knn_query(Q, k=n_cand, num_threads=engine_threads())
            except RuntimeError as err:   # fewer than n_cand classes reachable from some query
                raise ValueError(f"k_factor: hnswlib could not return {n_cand} candidates per query ({err}); "
                                 f"lower k_factor") from None
        return labels.astype(np.int64)

    def default_search(self):
        return {"ef": min(self.Search().ef, self.n_classes)}

    def tuning_grid(self, k):
        efs = dict.fromkeys(min(e, self.n_classes) for e in (16, 32, 64, 128, 256, 512, 1024))
        return [{"ef": e} for e in efs]
