"""Category embeddings: co-occurrence counts by hand, PPMI/SVD against the formula, table round trip."""

import numpy as np

from prepare.category_embed import cooccurrence, learn_embeddings, read_table, write_table


def test_cooccurrence_by_hand():
    codes = np.array([0, 1, 1, 2])
    edges = np.array([[0, 1, 2], [1, 2, 3]])  # 0-1, 1-1, 1-2 by category
    m = cooccurrence(codes, edges, 3)
    assert m.tolist() == [[0, 1, 0], [1, 2, 1], [0, 1, 0]]


def test_ppmi_svd_matches_the_formula():
    rng = np.random.default_rng(0)
    m = rng.integers(0, 20, size=(5, 5)).astype(float)
    m = m + m.T
    vec = learn_embeddings(m, dim=8)
    # slow reference written from the docstring, entry by entry
    total, row = m.sum(), m.sum(axis=1)
    ppmi = np.zeros_like(m)
    for a in range(5):
        for b in range(5):
            if m[a, b] > 0:
                ppmi[a, b] = max(0.0, np.log(m[a, b] * total / (row[a] * row[b])))
    u, s, vt = np.linalg.svd(ppmi)
    ref = (u + vt.T) * np.sqrt(s)
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    assert vec.shape == (5, 8) and np.allclose(vec[:, 5:], 0)
    # same vectors up to each column's sign: compare Gram matrices
    assert np.allclose(vec @ vec.T, ref @ ref.T, atol=1e-5)


def test_colocated_categories_are_closer():
    # a and b always neighbours, c and d always neighbours, never across.
    m = np.array([[2, 10, 0, 0], [10, 2, 0, 0], [0, 0, 2, 10], [0, 0, 10, 2]], float)
    v = learn_embeddings(m, dim=4)
    assert v[0] @ v[1] > 0.9 and abs(v[0] @ v[2]) < 0.1


def test_table_roundtrip(tmp_path):
    vec = np.arange(6, dtype=np.float32).reshape(2, 3) / 7
    write_table(str(tmp_path / "t.csv"), ["a", "b, c"], vec)
    cats, back = read_table(str(tmp_path / "t.csv"))
    assert cats == ["a", "b, c"] and np.array_equal(back, vec)
