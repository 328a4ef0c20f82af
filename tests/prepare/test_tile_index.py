"""The tile index: written as GeoPackage + CSV with the CRS, read back, names located, grid positions."""

import numpy as np
import pytest

from prepare.tile_index import TileIndex, grid_positions, read_tile_index, write_tile_index
from tests.prepare.geo_helpers import grid_bounds
from utils.errors import UserError


def test_roundtrip_with_crs_and_columns(tmp_path):
    bounds = grid_bounds(500_000, 3_400_000, 250, 2, 3)
    rows, cols = np.divmod(np.arange(6), 3)
    names = [f"r{r:04d}_c{c:04d}.png" for r, c in zip(rows, cols, strict=True)]
    idx = TileIndex(
        names=names,
        bounds=bounds,
        crs="EPSG:32651",
        rows=rows,
        cols=cols,
        columns={
            "split": np.array(["train", "", "val", "train", "", ""], dtype=object),
            "pop": np.array([1.5, np.nan, 3, 4, 5, 6]),
        },
    )
    assert read_tile_index(tmp_path) is None
    write_tile_index(tmp_path, idx)
    back = read_tile_index(tmp_path)
    assert back.names == names and back.crs == "EPSG:32651" and np.allclose(back.bounds, bounds)
    assert back.rows.tolist() == rows.tolist() and back.cols.tolist() == cols.tolist() and back.regular
    assert back.columns["split"].tolist() == ["train", "", "val", "train", "", ""]
    assert np.isnan(back.columns["pop"][1]) and back.columns["pop"][2] == 3
    assert back.locate(["r0001_c0002.png", "r0000_c0001"]).tolist() == [5, 1]
    with pytest.raises(UserError, match="tile 'x.png' is not in the tile index"):
        back.locate(["x.png"])
    csv = (tmp_path / "tile_index.csv").read_text().splitlines()
    assert csv[0] == "name,minx,miny,maxx,maxy" and csv[1] == "r0000_c0000.png,500000.0,3399750.0,500250.0,3400000.0"


def test_grid_positions_and_bad_file(tmp_path):
    b = grid_bounds(10, 100, 5, 3, 4)[[11, 0, 5]]  # any order
    rows, cols = grid_positions(b)
    assert rows.tolist() == [2, 0, 1] and cols.tolist() == [3, 0, 1]
    (tmp_path / "tile_index.gpkg").write_bytes(b"not a geopackage" * 100)
    with pytest.raises(UserError, match="cannot read the tile index .*; re-run prepare_pois.py"):
        read_tile_index(tmp_path)
