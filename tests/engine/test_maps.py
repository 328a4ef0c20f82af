"""Maps of predictions and embeddings on a tiny tile index: the GIS files' content and the PNGs."""

import geopandas as gpd
import numpy as np
import pytest
from PIL import Image

from engine import maps
from prepare.tile_index import TileIndex
from tests.prepare.geo_helpers import grid_bounds
from utils.errors import UserError


@pytest.fixture
def index():
    rows, cols = np.divmod(np.arange(12), 4)
    return TileIndex(
        names=[f"r{r:04d}_c{c:04d}.png" for r, c in zip(rows, cols, strict=True)],
        bounds=grid_bounds(500_000, 3_400_000, 500, 3, 4),
        crs="EPSG:32651",
        rows=rows,
        cols=cols,
    )


def test_prediction_gpkg_and_png(tmp_path, index):
    names = ["r0002_c0003.png", "r0000_c0000", "r0001_c0001.png"]  # any order, extension optional
    truth, pred = np.array([10.0, 20.0, 30.0]), np.array([12.0, 15.0, 30.0])
    frame = maps.write_prediction_map(
        index,
        names,
        truth,
        pred,
        tmp_path / "p.gpkg",
        tmp_path / "p.png",
        split=["val", "train", "val"],
        title="population",
    )
    back = gpd.read_file(tmp_path / "p.gpkg")
    assert back.crs.to_epsg() == 32651 and back["name"].tolist() == [
        "r0002_c0003.png",
        "r0000_c0000.png",
        "r0001_c0001.png",
    ]
    assert back["residual"].tolist() == [2.0, -5.0, 0.0] and back["split"].tolist() == ["val", "train", "val"]
    assert back.geometry.iloc[0].bounds == (501_500.0, 3_398_500.0, 502_000.0, 3_399_000.0)
    assert list(frame.columns) == ["name", "split", "geometry", "truth", "prediction", "residual"]
    with Image.open(tmp_path / "p.png") as im:
        assert im.format == "PNG" and im.size[0] > 2 * im.size[1]  # three panels side by side
    with pytest.raises(UserError, match="not in the tile index"):
        maps.prediction_frame(index, ["nowhere.png"], [1.0], [1.0])


def test_distribution_frame_dominant_class(tmp_path, index):
    truth = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    pred = np.array([[0.3, 0.6, 0.1], [0.2, 0.1, 0.7]])
    frame = maps.write_distribution_map(
        index, index.names[:2], truth, pred, ["res", "com", "green"], tmp_path / "f.gpkg", tmp_path / "f.png"
    )
    assert frame["dominant_truth"].tolist() == ["res", "green"] and frame["dominant_pred"].tolist() == ["com", "green"]
    assert np.allclose(frame["l1"], [0.8, 0.2]) and frame["pred_com"].tolist() == [0.6, 0.1]
    assert (tmp_path / "f.png").stat().st_size > 1000


def test_embedding_parquet_pca_and_clusters(tmp_path, index):
    rng = np.random.default_rng(0)
    # two well separated groups: left half and right half of the grid
    emb = rng.normal(0, 0.1, (12, 5)) + np.where(index.cols[:, None] < 2, 5.0, -5.0)
    frame = maps.write_embedding_map(index, index.names, emb, tmp_path / "e.parquet", tmp_path / "e.png", clusters=2)
    back = gpd.read_parquet(tmp_path / "e.parquet")
    assert back.crs.to_epsg() == 32651 and np.allclose(back[[f"e{k}" for k in range(5)]].to_numpy(), emb, atol=1e-6)
    left = frame["cluster"].to_numpy()[index.cols < 2]
    right = frame["cluster"].to_numpy()[index.cols >= 2]
    assert len(set(left)) == 1 and len(set(right)) == 1 and left[0] != right[0]
    assert np.sign(frame["pc1"].to_numpy()[index.cols < 2]).tolist().count(np.sign(frame["pc1"].iloc[0])) == 6
    # GeoPackage: PCs and clusters only (a GeoPackage table cannot hold thousands of columns)
    maps.write_frame(maps.embedding_frame(index, index.names, emb, keep_vectors=False), tmp_path / "e.gpkg")
    assert "e0" not in gpd.read_file(tmp_path / "e.gpkg").columns


def test_irregular_tiles_drawn_as_polygons(tmp_path):
    # tiles cut elsewhere: different sizes, not on one grid, unknown CRS
    b = np.array([[0, 0, 10, 10], [12, 0, 20, 7], [3, 11, 9, 20.5]], float)
    idx = TileIndex(names=["a.png", "b.png", "c.png"], bounds=b, crs=None, rows=np.zeros(3, int), cols=np.arange(3))
    maps.write_prediction_map(
        idx, idx.names, np.array([1.0, 2, 3]), np.array([1.0, 2.5, 2]), tmp_path / "p.gpkg", tmp_path / "p.png"
    )
    assert gpd.read_file(tmp_path / "p.gpkg").crs is None and (tmp_path / "p.png").stat().st_size > 1000
