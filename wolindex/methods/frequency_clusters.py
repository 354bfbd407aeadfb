"""The old import path of adaptive's frequency clusters, which live in wolindex.methods.adaptive.clusters."""
from .adaptive.clusters import check_cutoffs, choose_cutoffs, frequency_order, geometric_cutoffs  # noqa: F401
from .adaptive.clusters import ideal_opening_cost, tail_hits  # noqa: F401
