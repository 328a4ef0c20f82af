"""The synthetic city as raw GIS files goes through prepare_pois.py's real-data path and comes back equal."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from PIL import Image

from prepare_pois import main as prepare_main
from synthetic import city as synthetic
from synthetic.raw import write_raw_city
from utils.errors import UserError


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    synthetic.generate_city(root / "city", n_tiles=16, tile_size=32, seed=0, embed_dim=8)
    done = write_raw_city(root / "city", root / "raw", district_tiles=2)
    return root, done


def test_raw_files_carry_the_city(raw):
    root, done = raw
    assert done == {
        "mosaic_px": [128, 128],
        "pois": len((root / "city" / "pois.csv").read_text().splitlines()) - 1,
        "districts": 4,
    }
    with rasterio.open(root / "raw" / "mosaic.tif") as src:
        assert (src.count, src.width, src.height, src.res) == (3, 128, 128, (1000 / 32, 1000 / 32))
        assert src.crs.is_projected
    census = gpd.read_file(root / "raw" / "census.gpkg")
    pop = sum(float((root / "city" / "pop1km" / p.name).read_text()) for p in (root / "city" / "pop1km").iterdir())
    assert census.crs.to_epsg() == 3857 and census["POP"].sum() == pytest.approx(pop, abs=4)
    assert gpd.read_file(root / "raw" / "pois.gpkg").crs.to_epsg() == 4326


def test_prepare_cuts_the_same_grid_and_shares_the_census(raw, tmp_path):
    root, _ = raw
    r = root / "raw"
    summary = prepare_main(
        [
            "--mosaic",
            str(r / "mosaic.tif"),
            "--tile_size_m",
            "1000",
            "--pois",
            str(r / "pois.gpkg"),
            "--target",
            f"pop1km={r / 'census.gpkg'}:POP",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert summary["tiles"] == 16 and summary["pois_outside_every_tile"] == 0
    assert summary["pois_used"] == sum(
        int(x) for x in np.loadtxt(root / "city" / "tiles.csv", delimiter=",", skiprows=1, usecols=4, dtype=int)
    )
    # Each 2 x 2-tile district's count is shared evenly among its four tiles: the total is kept.
    total = sum(float(p.read_text()) for p in (tmp_path / "out" / "pop1km").iterdir())
    assert total == pytest.approx(gpd.read_file(r / "census.gpkg")["POP"].sum(), rel=1e-6)
    with pytest.raises(UserError, match="holds no georeferenced tile index"):
        write_raw_city(tmp_path / "nowhere", tmp_path / "raw2")


def test_style_b_city_as_raw_files(tmp_path):
    synthetic.generate_city(tmp_path / "city", n_tiles=9, tile_size=16, seed=1, embed_dim=4, style="b")
    done = write_raw_city(tmp_path / "city", tmp_path / "raw", district_tiles=3)
    assert done == {
        "mosaic_px": [48, 48],
        "pois": len((tmp_path / "city" / "pois.csv").read_text().splitlines()) - 1,
        "districts": 1,
    }
    with rasterio.open(tmp_path / "raw" / "mosaic.tif") as src:
        # The mosaic holds the city's own (style b) pixels, tile by tile.
        tile = np.asarray(Image.open(tmp_path / "city" / "img" / "tile_001_002.png")).transpose(2, 0, 1)
        assert np.array_equal(src.read(window=((16, 32), (32, 48))), tile)
    pop = sum(float(p.read_text()) for p in (tmp_path / "city" / "pop1km").iterdir())
    assert gpd.read_file(tmp_path / "raw" / "census.gpkg")["POP"].sum() == pytest.approx(pop, abs=1)
