import numpy as np
import pytest

from wolindex.metrics import mean_candidates, p_at_k, true_recall_at_k


def test_p_at_k():
    exact = np.array([[1, 2, 3], [4, 5, 6]])
    approx = np.array([[3, 1, 9], [7, 8, -1]])
    assert p_at_k(approx, exact) == pytest.approx((2 / 3 + 0) / 2)
    assert p_at_k(approx, exact, 1) == 0.0
    assert p_at_k(exact, exact, 2) == 1.0


def test_p_at_k_counts_ties_at_the_boundary():
    exact_l, exact_s = np.array([[1, 2]]), np.array([[5.0, 4.0]])
    approx_l, approx_s = np.array([[1, 7]]), np.array([[5.0, 4.0]])  # class 7 ties with class 2
    assert p_at_k(approx_l, exact_l) == 0.5
    assert p_at_k(approx_l, exact_l, scores=approx_s, exact_scores=exact_s) == 1.0
    with pytest.raises(ValueError, match="both or neither"):
        p_at_k(approx_l, exact_l, scores=approx_s)


def test_true_recall():
    labels = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    y = np.array([2, 4, 0])
    assert true_recall_at_k(labels, y, 1) == pytest.approx(1 / 3)
    assert true_recall_at_k(labels, y) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        true_recall_at_k(labels, y, 4)


def test_mean_candidates():
    assert mean_candidates([10, 20]) == 15.0
