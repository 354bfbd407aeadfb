"""wolindex.distributed: scale-out on Ray (the optional extra `wolindex[ray]`; `import wolindex` never imports it).

ShardedIndex: the classes split into shards, each a wolindex Index over its rows (its local ids mapped back to
global ids) held by a Ray actor that memory-maps it from a folder every worker can read; a search goes to every
shard and the shards' top-k lists merge exactly (scores are exact logits; ties: smaller global id first), so
the result equals a single-process merge of the same shard indexes. A dead actor is restarted by Ray from its
saved shard and its task retried; a shard that cannot come back is an error, never a top-k without it.

map_batches: top-k over a ray.data.Dataset of hidden states, by a pool of Ray Data actors that each load the
index once (mmap); batching and backpressure are Ray Data's.

Threads: an actor's Numba kernels use NUMBA_NUM_THREADS of its environment (the one the cluster started in, or
Ray's runtime_env env_vars), all cores by default; give each actor num_cpus to match.

A sharded index is a folder: shards.json (format, layer shape, method, split, and per shard its class count,
the SHA-256 of its ids and of its index's meta.json), shard-NNNNN.wol (a wolindex index file) and
shard-NNNNN.ids.npy (its global class ids, int64, strictly increasing)."""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
import uuid
from pathlib import Path

import numpy as np

try:
    import ray
except ImportError as err:  # pragma: no cover - the extra is missing
    raise ImportError("wolindex.distributed needs Ray: pip install 'wolindex[ray]'") from err

from . import format as fmt
from ._numeric import with_one_column
from ._version import __version__
from .arrays import as_labels, as_queries, check_k
from .build import build as build_index
from .index import load as load_index
from .layer import OutputLayer
from .methods import get_method
from .methods.adaptive.clusters import frequency_order
from .rows import as_float32_rows, check_row_dtype

FORMAT = "wolindex-sharded"
FORMAT_VERSION = 1
MANIFEST = "shards.json"
MAX_MANIFEST_BYTES = 64 << 20
SPLITS = ("contiguous", "method")
OUTPUT_COLUMNS = ("ids", "scores")
LSE_ROWS = 8192       # classes per block of the log-sum-exp
LSE_QUERIES = 2048    # queries per block of the log-sum-exp (a block: 64 MiB of float32 logits)


class ShardError(RuntimeError):
    """A shard's actor died and could not be restarted: the search returned nothing."""


def merge_shard_topk(parts, k: int):
    """Per-shard top lists [(scores (N, k_s) float32, global ids (N, k_s) int64), ...] over disjoint classes ->
    their joint top-k: scores (N, k) float32, ids (N, k) int64, by score desc then id asc, padding (-inf, -1)
    last (sum of k_s >= k)."""
    scores = np.concatenate([s for s, _ in parts], axis=1)
    ids = np.concatenate([i for _, i in parts], axis=1)
    order = np.lexsort((np.where(ids < 0, np.iinfo(np.int64).max, ids), -scores), axis=1)[:, :k]
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)


def split_classes(n_classes: int, n_shards: int, counts: np.ndarray | None = None) -> list[np.ndarray]:
    """Class ids (D_s,) int64 per shard, each strictly increasing: contiguous ranges of ids (counts None), or,
    with class counts (D,), the classes dealt out by frequency rank (rank r to shard r mod n_shards), so every
    shard holds an equal share of the frequent classes and of each frequency band."""
    if counts is None:
        return [ids.astype(np.int64) for ids in np.array_split(np.arange(n_classes), n_shards)]
    order = frequency_order(counts)
    return [np.sort(order[s::n_shards]) for s in range(n_shards)]


def _shard_files(folder: Path, shard: int) -> tuple[Path, Path]:
    return folder / f"shard-{shard:05d}.wol", folder / f"shard-{shard:05d}.ids.npy"


def _sha256(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).data).hexdigest()


def _check_int(name: str, value, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if value < low or (high is not None and value > high):
        raise ValueError(f"{name}: expected an int in [{low}, {'inf' if high is None else high}], got {value}")
    return int(value)


def _read_manifest(path) -> dict:
    """The checked shards.json of the sharded index folder at path."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path: expected a str or os.PathLike, got {type(path).__name__}")
    file = Path(path) / MANIFEST
    if not file.is_file():
        raise ValueError(f"path: {path} is not a sharded wolindex index (no {MANIFEST})")
    if file.stat().st_size > MAX_MANIFEST_BYTES:
        raise ValueError(f"path: {file} is larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        m = json.loads(file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise ValueError(f"path: {file} is not valid JSON") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise ValueError(f"path: {path} is not a sharded wolindex index (format is not {FORMAT!r})")
    if m.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"path: {path} has format version {m.get('format_version')!r}; this wolindex reads "
                         f"{FORMAT_VERSION}")
    fields = {"n_classes": int, "dim": int, "method": str, "split": str, "scoring": str, "shards": list}
    entry = {"n_classes": int, "ids_sha256": str, "meta_sha256": str}
    for where, d, kinds in [(MANIFEST, m, fields)] + [(f"shards[{i}]", e, entry) for i, e in
                                                     enumerate(m.get("shards") or [])]:
        if not isinstance(d, dict) or not all(isinstance(d.get(f), t) and not isinstance(d.get(f), bool)
                                              for f, t in kinds.items()):
            raise ValueError(f"path: {path}: {where} in {MANIFEST} needs fields {sorted(kinds)} of types "
                             f"{[t.__name__ for t in kinds.values()]}")
    if not m["shards"] or sum(e["n_classes"] for e in m["shards"]) != m["n_classes"]:
        raise ValueError(f"path: {path}: the shards' class counts in {MANIFEST} do not add up to n_classes")
    return m


def _read_ids(path: Path, shard: int, entry: dict, n_classes: int, verify: bool) -> np.ndarray:
    """Shard `shard`'s global class ids (D_s,) int64, memory-mapped, checked against its manifest entry."""
    file = _shard_files(path, shard)[1]
    try:
        ids = np.load(file, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ValueError(f"path: {file} cannot be read as a .npy array ({err})") from None
    if ids.dtype != np.int64 or ids.shape != (entry["n_classes"],):
        raise ValueError(f"path: {file}: expected int64 ids of shape ({entry['n_classes']},), got {ids.dtype} "
                         f"{ids.shape}")
    if verify and _sha256(ids) != entry["ids_sha256"]:
        raise ValueError(f"path: {file}: checksum mismatch (file damaged or altered)")
    if ids.size and (ids[0] < 0 or ids[-1] >= n_classes or np.any(np.diff(ids) <= 0)):
        raise ValueError(f"path: {file}: ids must increase strictly within [0, {n_classes})")
    return ids


def _check_shards(path: Path, m: dict, verify: bool) -> None:
    """Every shard's ids and index header against the manifest; together the shards partition [0, D)."""
    seen = np.zeros(m["n_classes"], bool)
    for shard, entry in enumerate(m["shards"]):
        ids = _read_ids(path, shard, entry, m["n_classes"], verify)
        if seen[ids].any():
            raise ValueError(f"path: {path}: shard {shard} holds classes of an earlier shard")
        seen[ids] = True
        file = _shard_files(path, shard)[0]
        try:
            meta = fmt.read_meta(fmt.open_store(file), verify)
        except FileNotFoundError:
            raise ValueError(f"path: {file} does not exist") from None
        if (meta["n_classes"], meta["dim"], meta["method"], meta.get("meta_sha256")) != \
                (entry["n_classes"], m["dim"], m["method"], entry["meta_sha256"]):
            raise ValueError(f"path: {file} is not the shard {MANIFEST} describes (classes, dim, method or "
                             f"meta_sha256 differ)")


class ShardServer:
    """One shard (or a whole index) in one process: its Index, memory-mapped, and its global ids.

    ShardServer(path, shard, verify, meta_sha256): shard `shard` of the sharded index folder at path, refused
    unless its meta.json's SHA-256 is meta_sha256 (when given: a restarted actor serves the shard it was
    started with or none); shard None: the wolindex index file or folder at path, whose ids are its own."""

    def __init__(self, path: str, shard: int | None = None, verify: bool = True, meta_sha256: str | None = None):
        if shard is None:
            self.index, self.ids = load_index(path, mmap=True, verify=verify), None
            return
        folder = Path(path)
        m = _read_manifest(folder)
        file = _shard_files(folder, shard)[0]
        meta = fmt.read_meta(fmt.open_store(file), verify)
        if meta_sha256 is not None and meta.get("meta_sha256") != meta_sha256:
            raise ValueError(f"path: {file} is no longer the shard this index was loaded with (meta_sha256 differs)")
        self.ids = _read_ids(folder, shard, m["shards"][shard], m["n_classes"], verify)
        self.index = load_index(file, mmap=True, verify=verify)
        if self.index.n_classes != self.ids.shape[0]:
            raise ValueError(f"path: {file} holds {self.index.n_classes} classes, its ids {self.ids.shape[0]}")

    def search(self, Q: np.ndarray, k: int, settings: dict):
        """Q (N, d) float32 -> this shard's top-min(k, D_s): scores (N, k_s) float32, global ids (N, k_s) int64."""
        scores, local = self.index.search(Q, min(k, self.index.n_classes), **settings)
        if self.ids is None:
            return scores, local
        return scores, np.where(local >= 0, self.ids[np.maximum(local, 0)], -1)

    def log_normaliser(self, Q: np.ndarray) -> np.ndarray:
        """Q (N, d) float32 -> (N,) float64: log sum_c exp(w_c . h + b_c) over this shard's classes (float32
        logits summed in float64); on spherical layers log sum_c ((w_c . h + b_c)^2 + epsilon), in O(d^2)."""
        layer = self.index.layer
        if layer.square:
            Hb = with_one_column(Q, dtype=np.float64)
            total = np.maximum(((Hb @ layer.gram) * Hb).sum(axis=1), 0.0) + layer.n_classes * layer.epsilon
            with np.errstate(divide="ignore"):
                return np.log(total)
        out = np.empty(Q.shape[0], np.float64)
        for q in range(0, Q.shape[0], LSE_QUERIES):
            H = Q[q:q + LSE_QUERIES]
            top = np.full(H.shape[0], -np.inf)
            total = np.zeros(H.shape[0])
            for lo in range(0, layer.n_classes, LSE_ROWS):
                logits = H @ as_float32_rows(layer.W[lo:lo + LSE_ROWS]).T + layer.b[lo:lo + LSE_ROWS]
                new_top = np.maximum(top, logits.max(axis=1))
                total = total * np.exp(top - new_top) + np.exp(logits - new_top[:, None]).sum(axis=1, dtype=np.float64)
                top = new_top
            out[q:q + LSE_QUERIES] = top + np.log(total)
        return out

    def stats(self) -> dict:
        """The shard's Index.stats(), with the process id and Ray node id serving it."""
        return {**self.index.stats(), "pid": os.getpid(), "node_id": ray.get_runtime_context().get_node_id()}


_ShardActor = ray.remote(ShardServer)


def _open_shards(path: str, verify: bool) -> list[ShardServer]:
    """Every shard of the sharded index at path, or the one wolindex index at path, in this process."""
    if (Path(path) / MANIFEST).is_file():
        return [ShardServer(path, s, verify) for s in range(len(_read_manifest(path)["shards"]))]
    return [ShardServer(path, None, verify)]


def _sibling(path: Path, kind: str) -> Path:
    return path.parent / f".{path.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:12]}"


def _check_save_path(path) -> Path:
    """The folder a sharded index may be written to: new, empty, or a sharded index (which it replaces)."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path: expected a str or os.PathLike, got {type(path).__name__}")
    path = Path(path)
    if path.is_symlink():
        raise ValueError(f"path: {path} is a symbolic link; save to the folder it points to")
    if not path.exists():
        if not path.parent.is_dir():
            raise ValueError(f"path: the folder {path.parent} does not exist")
        return path
    if not path.is_dir():
        raise ValueError(f"path: {path} is a file; a sharded index is a folder; refusing to replace it")
    if any(path.iterdir()):
        try:
            _read_manifest(path)
        except ValueError:
            raise ValueError(f"path: {path} is a folder that is not a sharded wolindex index; refusing to "
                             f"overwrite it") from None
    return path


def _write_folder(path: Path, fill) -> None:
    """Fill a temporary sibling folder by fill(folder), then rename it into place (replacing path)."""
    tmp = _sibling(path, "tmp")
    try:
        fill(tmp)
        if path.exists():
            old = _sibling(path, "old")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _class_counts(layer: OutputLayer, split: str, train, labels):
    """(train (N, d) float32 or None, class counts (D,) int64 or None): the layer's, else the labels'."""
    H = None if train is None else as_queries(train, layer.dim, "train")
    counts = layer.class_counts
    if labels is not None:
        if H is None:
            raise ValueError("labels: given without train hidden states")
        y = as_labels(labels, H.shape[0], layer.n_classes)
        counts = counts if counts is not None else np.bincount(y, minlength=layer.n_classes).astype(np.int64)
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    if split == "method" and counts is None:
        raise ValueError("split: 'method' deals the classes out by frequency rank; pass class_counts or labels")
    return H, counts


def _write_shards(folder: Path, layer: OutputLayer, shard_ids: list, counts, split: str, H, verbose: bool,
                  method: str, dtype: str, settings: dict) -> None:
    """Build each shard's index (wolindex.build on its rows, the whole train H, its class counts), write it,
    its ids and the manifest into the new folder."""
    folder.mkdir()
    entries = []
    for shard, ids in enumerate(shard_ids):
        try:
            index = build_index(layer.W[ids], layer.b[ids], method=method, train=H,
                                class_counts=None if counts is None else counts[ids], scoring=layer.scoring,
                                epsilon=layer.epsilon, dtype=dtype, verbose=verbose, **settings)
        except (ValueError, TypeError) as err:
            raise type(err)(f"shard {shard} ({ids.size} classes): {err}") from err
        index_file, ids_file = _shard_files(folder, shard)
        index.save(index_file)
        np.save(ids_file, ids, allow_pickle=False)
        entries.append({"n_classes": int(ids.size), "ids_sha256": _sha256(ids),
                        "meta_sha256": fmt.read_meta(fmt.open_store(index_file))["meta_sha256"]})
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "library_version": __version__,
                "n_classes": layer.n_classes, "dim": layer.dim, "method": method, "split": split,
                "scoring": layer.scoring, "shards": entries}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))


def _check_timeout(timeout) -> None:
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                or not timeout > 0):
        raise ValueError(f"timeout: expected None or a number of seconds > 0, got {timeout!r}")


def _check_serving(max_restarts, actor_options) -> dict:
    _check_int("max_restarts", max_restarts, 0)
    if actor_options is None:
        return {}
    if not isinstance(actor_options, dict):
        raise TypeError(f"actor_options: expected a dict of Ray actor options, got {type(actor_options).__name__}")
    if {"max_restarts", "max_task_retries"} & set(actor_options):
        raise ValueError("actor_options: set restarts with max_restarts=; tasks are retried while restarts last")
    return dict(actor_options)


class ShardedIndex:
    """Classes sharded over Ray actors; build with ShardedIndex.build or open with ShardedIndex.load."""

    def __init__(self, path: Path, manifest: dict, actors: list, max_restarts: int):
        self.path = path
        self.manifest = manifest
        self.actors = actors
        self.max_restarts = max_restarts

    @property
    def n_classes(self) -> int:
        return self.manifest["n_classes"]

    @property
    def dim(self) -> int:
        return self.manifest["dim"]

    @property
    def n_shards(self) -> int:
        return len(self.manifest["shards"])

    @property
    def method_name(self) -> str:
        return self.manifest["method"]

    @property
    def shard_sizes(self) -> list[int]:
        return [e["n_classes"] for e in self.manifest["shards"]]

    @classmethod
    def build(cls, W, b=None, *, path, n_shards: int, method: str = "exact", split: str = "contiguous",
              train=None, labels=None, class_counts=None, scoring: str = "logit", epsilon: float = 0.0,
              dtype: str = "float32", verbose: bool = False, max_restarts: int = 3,
              actor_options: dict | None = None, **settings):
        """Split the classes of W (D, d), b (D,) into n_shards, build a wolindex index per shard (wolindex.build
        with `method`, its **settings, the whole `train` (N, d) and the shard's rows), write them to the folder
        `path` (every worker must be able to read it) and serve them: one Ray actor per shard (see load); dtype:
        how the shards store their rows (see wolindex.build). The
        shards are built one after another in this process, which holds the whole layer.

        split: 'contiguous' (shard s holds a contiguous range of ids) or 'method' (classes dealt out by
        frequency rank, so each shard holds an equal share of the frequent classes: balanced shard costs for
        frequency-driven methods such as adaptive, whose head is then every shard's most frequent classes).
        class_counts (D,) int, else the frequencies of labels (N,), order that split and go to each shard's
        builder (its classes' counts). Labels are not passed on: a shard's builder learns its own top-k from
        the exact scores over its classes, as a shard must return them. Shard ids are kept increasing, so a
        shard's tie order (smaller local id first) is the global one and the merge is exact, ties included."""
        layer = OutputLayer.from_arrays(W, b, class_counts, scoring, epsilon)
        _check_int("n_shards", n_shards, 1, layer.n_classes)
        get_method(method).Build.from_dict(settings)
        check_row_dtype(dtype)
        H, counts = _class_counts(layer, split, train, labels)
        target = _check_save_path(path)
        _check_serving(max_restarts, actor_options)
        shard_ids = split_classes(layer.n_classes, n_shards, counts if split == "method" else None)
        _write_folder(target, lambda folder: _write_shards(folder, layer, shard_ids, counts, split, H, verbose,
                                                           method, dtype, settings))
        return cls.load(target, max_restarts=max_restarts, actor_options=actor_options)

    @classmethod
    def load(cls, path, *, verify: bool = True, max_restarts: int = 3, actor_options: dict | None = None):
        """Serve the sharded index in the folder `path` (readable by every worker): one Ray actor per shard,
        each loading its shard with mmap=True. A dead actor is restarted (at most max_restarts times over its
        life) from the same files, checked to be the same shard, and its pending searches are retried.
        actor_options: Ray actor options (num_cpus, resources, scheduling_strategy, runtime_env, ...);
        verify: check every SHA-256 (here and in each actor)."""
        if not isinstance(verify, bool):
            raise TypeError(f"verify: expected a bool, got {type(verify).__name__}")
        options = _check_serving(max_restarts, actor_options)
        m = _read_manifest(path)
        path = Path(path).resolve()
        _check_shards(path, m, verify)
        actor_cls = _ShardActor.options(max_restarts=max_restarts, max_task_retries=-1, **options)
        actors = [actor_cls.remote(str(path), shard, verify, entry["meta_sha256"])
                  for shard, entry in enumerate(m["shards"])]
        sharded = cls(path, m, actors, max_restarts)
        try:
            sharded._gather([a.stats.remote() for a in actors], None)   # every shard up, or a clear error now
        except ShardError:
            sharded.shutdown()
            raise
        return sharded

    def _gather(self, futures: list, timeout: float | None) -> list:
        """ray.get of one future per shard, or ShardError / TimeoutError naming the shard: never a partial list."""
        if not futures:
            raise RuntimeError(f"this ShardedIndex was shut down; ShardedIndex.load({str(self.path)!r}) serves it "
                               f"again")
        deadline = None if timeout is None else time.monotonic() + timeout
        out = []
        for shard, future in enumerate(futures):
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                out.append(ray.get(future, timeout=left))
            except ray.exceptions.GetTimeoutError:
                raise TimeoutError(f"timeout: shard {shard} of {self.path} gave no answer within {timeout} s; "
                                   f"nothing returned") from None
            except ray.exceptions.RayActorError as err:
                raise ShardError(f"shard {shard} of {self.path}: its actor died and did not come back (it could not "
                                 f"load its shard, or its max_restarts={self.max_restarts} restarts are used up); "
                                 f"nothing returned") from err
        return out

    def search(self, H, k: int = 10, *, timeout: float | None = None, **settings):
        """Top-k classes of each query over every shard, by exact logit (its square on spherical layers).

        H: (N, d) array (any framework, any float dtype; computed in float32); k: 1 <= k <= D; settings: the
        method's search settings, the same for every shard; timeout: seconds, or None to wait.
        Returns scores (N, k) float32 and global class ids (N, k) int64, best first (ties: smaller id first);
        equal to merging each shard's own top-k in one process. ShardError when a shard is lost."""
        Q = as_queries(H, self.dim)
        k = check_k(k, self.n_classes)
        get_method(self.method_name).Search.from_dict(None, **settings)
        _check_timeout(timeout)
        ref = ray.put(Q)
        parts = self._gather([a.search.remote(ref, k, settings) for a in self.actors], timeout)
        return merge_shard_topk(parts, k)

    def log_normaliser(self, H, *, timeout: float | None = None) -> np.ndarray:
        """H (N, d) -> (N,) float64: log Z = log sum_c exp(w_c . h + b_c) over all D classes, exactly (each
        shard's log-sum-exp over its classes, merged by logaddexp); log-probabilities are scores - log Z[:, None].
        On spherical layers log sum_c ((w_c . h + b_c)^2 + epsilon): p = (score + epsilon) / exp(log Z)."""
        Q = as_queries(H, self.dim)
        _check_timeout(timeout)
        ref = ray.put(Q)
        return np.logaddexp.reduce(self._gather([a.log_normaliser.remote(ref) for a in self.actors], timeout))

    def stats(self) -> list[dict]:
        """Per shard: its Index.stats() plus the pid and Ray node id of the actor serving it."""
        return self._gather([a.stats.remote() for a in self.actors], None)

    def save(self, path) -> None:
        """Copy the index's folder to `path` (new, empty, or a sharded index, which it replaces atomically)."""
        target = _check_save_path(path)
        if target.resolve() == self.path:
            return
        _write_folder(target, lambda folder: shutil.copytree(self.path, folder))

    def shutdown(self) -> None:
        """Stop the shards' actors (no restart); the files stay."""
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors = []

    def __repr__(self) -> str:
        return (f"<wolindex.distributed.ShardedIndex method={self.method_name!r} D={self.n_classes} d={self.dim} "
                f"shards={self.n_shards} path={str(self.path)!r}>")


class BatchSearcher:
    """Ray Data callable class: loads the index at index_path once (mmap; all shards of a sharded index, merged
    in process) and adds the columns ids (n, k) int64 and scores (n, k) float32 to each numpy batch."""

    def __init__(self, index_path: str, k: int, column: str, settings: dict, verify: bool):
        self.shards = _open_shards(index_path, verify)
        self.k, self.column, self.settings = k, column, settings

    def __call__(self, batch: dict) -> dict:
        if self.column not in batch:
            raise ValueError(f"column: {self.column!r} is not a column of the dataset (it has {sorted(batch)})")
        clash = sorted(set(OUTPUT_COLUMNS) & set(batch))
        if clash:
            raise ValueError(f"dataset: already has the output column(s) {clash}; rename or drop them first")
        Q = as_queries(batch[self.column], self.shards[0].index.dim, f"column {self.column!r}")
        scores, ids = merge_shard_topk([s.search(Q, self.k, self.settings) for s in self.shards], self.k)
        return {**batch, "ids": ids, "scores": scores}


def _describe(index_path) -> tuple[int, str]:
    """(n_classes, method) of the sharded index or the wolindex index at index_path."""
    if not isinstance(index_path, (str, os.PathLike)):
        raise TypeError(f"index_path: expected a str or os.PathLike, got {type(index_path).__name__}")
    if (Path(index_path) / MANIFEST).is_file():
        m = _read_manifest(index_path)
        return m["n_classes"], m["method"]
    try:
        meta = fmt.read_meta(fmt.open_store(index_path))
    except FileNotFoundError:
        raise ValueError(f"index_path: {index_path} does not exist") from None
    return meta["n_classes"], meta["method"]


def map_batches(dataset, index_path, *, k: int = 10, column: str = "hidden", batch_size: int = 4096,
                concurrency: int | tuple[int, int] = 1, num_cpus: float | None = None, verify: bool = True,
                ray_options: dict | None = None, **settings):
    """dataset (a ray.data.Dataset whose `column` holds hidden states, (d,) float per row) -> the lazy Dataset
    with two more columns: ids (k,) int64 and scores (k,) float32, the top-k of the index at index_path (a
    wolindex index, or a sharded index folder) with the method's search settings. Runs on a pool of Ray Data
    actors (ActorPoolStrategy: concurrency n, or (min, max) to autoscale; num_cpus each) that load the index
    once with mmap=True (readable by every worker); batch_size rows per call; ray_options: more arguments of
    Dataset.map_batches (runtime_env, memory, resources, ...)."""
    from ray import data as ray_data

    if not isinstance(dataset, ray_data.Dataset):
        raise TypeError(f"dataset: expected a ray.data.Dataset, got {type(dataset).__name__}")
    n_classes, method = _describe(index_path)
    k = check_k(k, n_classes)
    if not isinstance(column, str) or not column:
        raise TypeError(f"column: expected a column name (a non-empty str), got {column!r}")
    schema = dataset.schema(fetch_if_missing=False)   # known without running the pipeline, else None
    if schema is not None and column not in schema.names:
        raise ValueError(f"column: {column!r} is not a column of the dataset (it has {schema.names})")
    _check_int("batch_size", batch_size, 1)
    if isinstance(concurrency, tuple) and len(concurrency) == 2:
        low, high = (_check_int("concurrency", c, 1) for c in concurrency)
        if low > high:
            raise ValueError(f"concurrency: expected (min, max) with min <= max, got {concurrency}")
        compute = ray_data.ActorPoolStrategy(min_size=low, max_size=high)
    else:
        compute = ray_data.ActorPoolStrategy(size=_check_int("concurrency", concurrency, 1))
    if num_cpus is not None and (isinstance(num_cpus, bool) or not isinstance(num_cpus, (int, float))
                                 or not (math.isfinite(num_cpus) and num_cpus >= 0)):
        raise ValueError(f"num_cpus: expected None or a number >= 0, got {num_cpus!r}")
    if not isinstance(verify, bool):
        raise TypeError(f"verify: expected a bool, got {type(verify).__name__}")
    options = {} if ray_options is None else ray_options
    if not isinstance(options, dict):
        raise TypeError(f"ray_options: expected a dict of Dataset.map_batches arguments, got {type(options).__name__}")
    taken = sorted(set(options) & {"fn_constructor_args", "batch_size", "batch_format", "compute", "concurrency",
                                   "num_cpus"})
    if taken:
        raise ValueError(f"ray_options: {taken} are set by map_batches' own arguments")
    get_method(method).Search.from_dict(None, **settings)
    if num_cpus is not None:
        options = {**options, "num_cpus": num_cpus}
    return dataset.map_batches(BatchSearcher, fn_constructor_args=(str(Path(index_path).resolve()), k, column,
                                                                    settings, verify),
                               batch_size=batch_size, batch_format="numpy", compute=compute, **options)
