"""Shared fixtures (helpers.py holds the shared functions)."""
import pytest

from wolindex.contrib.datasets import debian_lm_100k_path


@pytest.fixture(scope="session")
def lm_data():
    """debian-lm-100k, or skip when WOLINDEX_DATA does not provide it."""
    if debian_lm_100k_path() is None:
        pytest.skip("debian-lm-100k not available (set WOLINDEX_DATA)")
    from wolindex.contrib.datasets import debian_lm_100k

    return debian_lm_100k()
