"""Exact training for very large sparse targets (Vincent, de Brebisson, Bouthillier 2015)."""
from .layers import FactoredLayer, NaiveLayer
from .losses import LOSSES
from .trainer import TrainResult, sparse_targets, train

__all__ = ["LOSSES", "FactoredLayer", "NaiveLayer", "TrainResult", "sparse_targets", "train"]
