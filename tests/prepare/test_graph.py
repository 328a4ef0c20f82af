"""Delaunay POI graphs: hand-checkable edge sets and the degenerate cases."""

import numpy as np
import pytest

from prepare.graph import delaunay_edges, edge_weights


def undirected(edge_index):
    return {tuple(sorted(p)) for p in edge_index.T.tolist()}


def test_square_with_centre():
    # Unit square with its centre: the triangulation is the four sides plus four spokes.
    xy = np.array([[0, 0], [1, 0], [1, 1], [0, 1], [0.5, 0.5]])
    ei, w = delaunay_edges(xy)
    assert undirected(ei) == {(0, 1), (1, 2), (2, 3), (0, 3), (0, 4), (1, 4), (2, 4), (3, 4)}
    assert ei.shape == (2, 16) and ei.dtype == np.int64 and w.dtype == np.float32
    # Both directions present, sorted by (source, target).
    pairs = ei.T.tolist()
    assert pairs == sorted(pairs)
    assert {tuple(p) for p in pairs} == {(b, a) for a, b in pairs}


@pytest.mark.parametrize("n", [0, 1])
def test_fewer_than_two_points(n):
    ei, w = delaunay_edges(np.zeros((n, 2)))
    assert ei.shape == (2, 0) and w.shape == (0,)


def test_two_points_and_collinear_chain():
    ei, _ = delaunay_edges(np.array([[0.0, 0.0], [3.0, 4.0]]))
    assert undirected(ei) == {(0, 1)}
    # Collinear points given out of order are chained along the line.
    ei, _ = delaunay_edges(np.array([[2.0, 2.0], [0.0, 0.0], [3.0, 3.0], [1.0, 1.0]]))
    assert undirected(ei) == {(1, 3), (0, 3), (0, 2)}


def test_duplicates_join_their_first_occurrence():
    xy = np.array([[0, 0], [1, 0], [0, 1], [1, 0]], dtype=float)
    ei, w = delaunay_edges(xy)
    assert undirected(ei) == {(0, 1), (0, 2), (1, 2), (1, 3)}
    dup = [k for k, (a, b) in enumerate(ei.T.tolist()) if {a, b} == {1, 3}]
    assert np.allclose(w[dup], 1.0)
    # All points at one location: a star on the first one.
    ei, w = delaunay_edges(np.ones((3, 2)))
    assert undirected(ei) == {(0, 1), (0, 2)} and np.allclose(w, 1.0)


def test_max_length_cut_and_weights():
    xy = np.array([[0, 0], [1, 0], [0, 1], [10, 10]], dtype=float)
    ei, w = delaunay_edges(xy, max_length=2.0)
    assert undirected(ei) == {(0, 1), (0, 2), (1, 2)}
    d = np.array([1.0, 2.0, 4.0])
    assert np.allclose(edge_weights(d), 1 / (1 + d / 2.0))
    assert np.allclose(edge_weights(np.zeros(2)), 1.0)
