"""The query engine: exact top-k over all classes, and exact top-k over candidate buckets (CSR class lists).

Ranking order everywhere: score descending, ties broken by the smaller class id. Rows with fewer than k
candidates are padded with label -1 and score -inf."""
from .buckets import Buckets, PackedRows
from .dispatch import candidate_topk, exact_topk, rescore_topk

__all__ = ["Buckets", "PackedRows", "candidate_topk", "exact_topk", "rescore_topk"]
