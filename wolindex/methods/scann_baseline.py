"""ScaNN (Guo et al. 2020) as a baseline (method 'scann'): a k-means tree over the rows [w, b] (whitened with
whiten=True), 4-bit anisotropic asymmetric hashing (AH) of each row's residual to its leaf, and ScaNN's own
exact reordering of the best `reorder`; its k_factor * k best are rescored exactly by the engine.

ScaNN saves to a folder of protocol buffers and .npy files. wolindex keeps their contents as plain arrays
instead (the leaves' centroids, each row's leaf, the AH codebooks and codes), checks them against the layer on
loading, then writes that folder anew from them, from the state (the config) and from the layer (the rows),
so ScaNN reads nothing from a file but numbers already checked to be in range. The build is seeded (k-means++
initialisation, ScaNN's clustering and sampling seeds) and reproducible. Searches use the engine's thread
count (numba.get_num_threads, which wolindex.contrib's set_threads sets).
"""
from __future__ import annotations

import math
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from ..params import check_int, check_number
from .base import check_array, check_state_int
from .faiss_baselines import (C_INT_MAX, PeerBuild, PeerMethod, PeerSearch, at_most, check_padded_width,
                              engine_threads, padded_width)
from .registry import register

CODES_PER_BLOCK = 16   # ScaNN's 4-bit AH ('lut16'): 16 centres per block of dimensions
ASSETS = (("AH_CENTERS", "ah_codebook.pb"), ("PARTITIONER", "serialized_partitioner.pb"),
          ("TOKENIZATION_NPY", "datapoint_to_token.npy"), ("AH_DATASET_NPY", "hashed_dataset.npy"),
          ("DATASET_NPY", "dataset.npy"))


def _scann() -> SimpleNamespace:
    """ScaNN's Python modules (and protobuf's text format), imported on first use."""
    try:
        from google.protobuf import text_format
        from scann.data_format import features_pb2
        from scann.partitioning import partitioner_pb2
        from scann.proto import centers_pb2, scann_pb2
        from scann.scann_ops import scann_assets_pb2
        from scann.scann_ops.py import scann_ops_pybind
    except ImportError:
        raise ImportError("the scann method needs scann: pip install 'wolindex[scann]'") from None
    return SimpleNamespace(text_format=text_format, features=features_pb2, partitioner=partitioner_pb2,
                           centers=centers_pb2, config=scann_pb2, assets=scann_assets_pb2, ops=scann_ops_pybind)


def _check_threshold(name: str, value) -> float:
    value = check_number(name, value, allow_zero=True)
    if value >= 1:
        raise ValueError(f"{name}: expected a number in [0, 1), got {value}")
    return value


@dataclass(frozen=True)
class ScannBuild(PeerBuild):
    """num_leaves: k-means tree leaves, at most D (0: sqrt(D)); training_sample_size: rows sampled to train the
    tree and the codebooks, at most D (0: all); dims_per_block: dimensions per 4-bit AH block, at most d + 1
    (rows are zero-padded to a multiple); anisotropic_quantization_threshold: ScaNN's T in [0, 1) weighting the
    quantisation error parallel to each row (0: plain k-means codebooks); seed: clustering and sampling seed."""

    num_leaves: int = 0
    training_sample_size: int = 0
    dims_per_block: int = 2
    anisotropic_quantization_threshold: float = 0.2
    seed: int = 0

    def validate(self) -> None:
        super().validate()
        check_int("num_leaves", self.num_leaves, 0, C_INT_MAX)
        check_int("training_sample_size", self.training_sample_size, 0, C_INT_MAX)
        check_int("dims_per_block", self.dims_per_block, 1, C_INT_MAX)
        _check_threshold("anisotropic_quantization_threshold", self.anisotropic_quantization_threshold)
        check_int("seed", self.seed, 0, C_INT_MAX)


@dataclass(frozen=True)
class ScannSearch(PeerSearch):
    """leaves_to_search: tree leaves scanned per query, at most the index's num_leaves; reorder (also accepted
    as ScaNN's pre_reorder_num_neighbors): AH candidates ScaNN reorders by exact inner products, at most D (at
    least k_factor * k is used)."""

    ALIASES = {"pre_reorder_num_neighbors": "reorder"}
    leaves_to_search: int = 32
    reorder: int = 100

    def validate(self) -> None:
        super().validate()
        check_int("leaves_to_search", self.leaves_to_search, 1, C_INT_MAX)
        check_int("reorder", self.reorder, 1, C_INT_MAX)


def _config(sc: SimpleNamespace, state: dict):
    """ScaNN's config (a ScannConfig message) for the state's settings: dot product, a k-means tree (k-means++
    initialised), residual 4-bit AH and exact reordering, every clustering and sampling seeded."""
    threshold = state["anisotropic_quantization_threshold"]
    sample = state["training_sample_size"]
    builder = (sc.ops.builder(np.zeros((0, state["width"]), np.float32), 10, "dot_product")   # reads the width only
               .tree(num_leaves=state["num_leaves"], num_leaves_to_search=state["num_leaves"],
                     training_sample_size=sample, random_init=False)
               .score_ah(state["dims_per_block"], anisotropic_quantization_threshold=threshold or math.nan,
                         training_sample_size=sample)
               .reorder(100))
    config = sc.config.ScannConfig()
    sc.text_format.Parse(builder.create_config(), config)
    config.partitioning.clustering_seed = state["seed"]
    config.hash.asymmetric_hash.clustering_seed = state["seed"]
    config.hash.asymmetric_hash.sampling_seed = state["seed"]
    return config


def _read_folder(sc: SimpleNamespace, folder: Path) -> dict[str, np.ndarray]:
    """The arrays of a folder ScaNN's serialize wrote: centroids (L, width) float64, tokens (D,) int32 (each
    row's leaf), codebook (blocks, 16, dims_per_block) float32 and codes (D, blocks) uint8."""
    partitioner = sc.partitioner.SerializedPartitioner()
    partitioner.ParseFromString((folder / "serialized_partitioner.pb").read_bytes())
    codebook = sc.centers.CentersForAllSubspaces()
    codebook.ParseFromString((folder / "ah_codebook.pb").read_bytes())
    return {"centroids": np.array([list(c.dimension) for c in partitioner.kmeans.kmeans_tree.root.centers],
                                  np.float64),
            "tokens": np.load(folder / "datapoint_to_token.npy").astype(np.int32),
            "codebook": np.array([[list(c.feature_value_float) for c in block.center]
                                  for block in codebook.subspace_centers], np.float32),
            "codes": np.load(folder / "hashed_dataset.npy").astype(np.uint8)}


def _train(sc: SimpleNamespace, X: np.ndarray, state: dict) -> dict[str, np.ndarray]:
    """ScaNN's searcher trained on the rows X (D, width) float32 with the state's settings, as the arrays of
    _read_folder (the searcher itself is dropped: Scann loads its own from the arrays)."""
    searcher = sc.ops.create_searcher(X, sc.text_format.MessageToString(_config(sc, state)), engine_threads())
    with tempfile.TemporaryDirectory(prefix="wolindex-scann-") as folder:
        searcher.serialize(folder)
        return _read_folder(sc, Path(folder))


def _write_folder(sc: SimpleNamespace, folder: Path, config, arrays: dict[str, np.ndarray], X: np.ndarray) -> str:
    """Write the folder ScaNN loads from the checked arrays, the config and the rows X (D, width) float32, as
    ScaNN's serialize writes it; returns its list of assets (text format)."""
    partitioner = sc.partitioner.SerializedPartitioner(n_tokens=len(arrays["centroids"]))
    tree = partitioner.kmeans.kmeans_tree
    tree.learned_spilling_type = 0          # NO_SPILLING
    tree.root.leaf_id, tree.root.learned_spilling_threshold = -1, math.nan
    for leaf, centre in enumerate(arrays["centroids"]):
        tree.root.centers.add().dimension.extend(centre.tolist())
        tree.root.children.add(leaf_id=leaf, learned_spilling_threshold=math.nan)
    codebook = sc.centers.CentersForAllSubspaces(quantization_scheme=0)   # PRODUCT
    for block in arrays["codebook"]:
        centres = codebook.subspace_centers.add()
        for centre in block:
            centres.center.add(feature_type=sc.features.GenericFeatureVector.FLOAT, feature_value_float=centre.tolist())
    (folder / "scann_config.pb").write_bytes(config.SerializeToString())
    (folder / "serialized_partitioner.pb").write_bytes(partitioner.SerializeToString())
    (folder / "ah_codebook.pb").write_bytes(codebook.SerializeToString())
    np.save(folder / "datapoint_to_token.npy", arrays["tokens"])
    np.save(folder / "hashed_dataset.npy", arrays["codes"])
    np.save(folder / "dataset.npy", X)
    assets = sc.assets.ScannAssets()
    for kind, name in ASSETS:
        assets.assets.add(asset_type=getattr(sc.assets.ScannAsset, kind), asset_path=str(folder / name))
    return sc.text_format.MessageToString(assets)


@register
class Scann(PeerMethod):
    """ScaNN's tree + AH + reorder searcher with dot products over [W, b], then exact rescoring."""

    name = "scann"
    Build = ScannBuild
    Search = ScannSearch

    def __init__(self, layer, arrays=None, state=None):
        """From built (or loaded) arrays: every array is checked against the layer and the state, then ScaNN
        loads a folder written from them (ScaNN keeps everything in memory; the folder is removed)."""
        super().__init__(layer, arrays, state)
        sc = _scann()
        config = _config(sc, self._check_state(layer))
        self._check_arrays(layer)
        X = self.indexed_rows(layer, self.width, self.row_transform)
        with tempfile.TemporaryDirectory(prefix="wolindex-scann-") as folder:
            assets = _write_folder(sc, Path(folder), config, self.arrays, X)
            self.searcher = sc.ops.ScannSearcher(sc.ops.scann_pybind.ScannNumpy(folder, assets))
        self._lock = threading.Lock()     # ScaNN's thread count is the searcher's, not the call's
        self._threads = 0

    @classmethod
    def build(cls, layer, params, train, labels, verbose):
        sc = _scann()
        D = layer.n_classes
        at_most("num_leaves", params.num_leaves, D, "D, the number of classes")
        at_most("training_sample_size", params.training_sample_size, D, "D, the number of classes")
        at_most("dims_per_block", params.dims_per_block, layer.dim + 1, "d + 1, the width of [W, b]")
        state = {"width": padded_width(layer.dim + 1, params.dims_per_block),
                 "num_leaves": params.num_leaves or max(1, round(math.sqrt(D))),
                 "training_sample_size": params.training_sample_size or D, "dims_per_block": params.dims_per_block,
                 "anisotropic_quantization_threshold": params.anisotropic_quantization_threshold,
                 "seed": params.seed, "whiten": params.whiten}
        X, arrays = cls._rows(layer, params, train, state["width"])
        arrays.update(_train(sc, X, state))
        return cls(layer, arrays, {**state, "num_leaves": len(arrays["centroids"])})

    def _width(self, layer) -> int:
        block = check_state_int(self.state, "dims_per_block", 1, layer.dim + 1)
        return check_padded_width(self.state, layer, block, f"dims_per_block={block}")

    def _check_state(self, layer) -> dict:
        """The state's settings, each checked (the width already is)."""
        check_state_int(self.state, "num_leaves", 1, layer.n_classes)
        check_state_int(self.state, "training_sample_size", 1, layer.n_classes)
        check_state_int(self.state, "seed", 0, C_INT_MAX)
        if "anisotropic_quantization_threshold" not in self.state:
            raise ValueError("state: anisotropic_quantization_threshold is missing")
        _check_threshold("state: anisotropic_quantization_threshold", self.state["anisotropic_quantization_threshold"])
        return self.state

    def _check_arrays(self, layer) -> None:
        """centroids, tokens, codebook and codes: shapes from the state, finite, every id and code in range."""
        D, leaves, block = layer.n_classes, self.state["num_leaves"], self.state["dims_per_block"]
        n_blocks = self.width // block
        check_array(self.arrays, "centroids", np.float64, (leaves, self.width))
        check_array(self.arrays, "codebook", np.float32, (n_blocks, CODES_PER_BLOCK, block))
        tokens = check_array(self.arrays, "tokens", np.int32, (D,))
        codes = check_array(self.arrays, "codes", np.uint8, (D, n_blocks))
        if tokens.min() < 0 or tokens.max() >= leaves:
            raise ValueError(f"arrays: tokens must lie in [0, {leaves}) (num_leaves), got {tokens.min()} .. "
                             f"{tokens.max()}")
        if codes.max() >= CODES_PER_BLOCK:
            raise ValueError(f"arrays: codes must lie in [0, {CODES_PER_BLOCK}), got up to {codes.max()}")

    def check_search(self, params) -> None:
        super().check_search(params)
        at_most("leaves_to_search", params.leaves_to_search, self.state["num_leaves"], "the index's num_leaves")
        at_most("reorder", params.reorder, self.n_classes, "D, the number of classes")

    def candidates(self, Q, n_cand, params):
        with self._lock:
            if self._threads != engine_threads():
                self._threads = engine_threads()
                self.searcher.set_num_threads(self._threads)
            ids, dist = self.searcher.search_batched_parallel(Q, n_cand, max(params.reorder, n_cand),
                                                              params.leaves_to_search)
        return np.where(np.isnan(dist), -1, ids.astype(np.int64))   # ScaNN pads with id 0, distance NaN

    def default_search(self):
        return {"leaves_to_search": min(self.Search().leaves_to_search, self.state["num_leaves"]),
                "reorder": min(self.Search().reorder, self.n_classes)}

    def nbytes(self) -> int:
        """Saved arrays plus the float32 copy of the rows (D, width) that ScaNN keeps to reorder with."""
        return super().nbytes() + self.n_classes * self.width * 4

    def tuning_grid(self, k):
        leaves = dict.fromkeys(min(n, self.state["num_leaves"]) for n in (1, 2, 4, 8, 16, 32, 64, 128, 256))
        return [{"leaves_to_search": n, "reorder": min(100, self.n_classes)} for n in leaves]
