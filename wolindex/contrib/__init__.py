"""Opt-in tooling around the library (as faiss.contrib): data sets (datasets, debian_cbow), the demo and
timing helpers. The core never imports this package; import its modules by name, e.g.
``from wolindex.contrib.datasets import synthetic``."""
