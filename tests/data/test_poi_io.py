"""POI and tile readers: CSV / GeoJSON / GeoPackage give the same POIs; world files give bounds."""

import json

import geopandas as gpd
import numpy as np
import shapely
import pytest
from PIL import Image

from data.poi_io import InputError, read_pois, read_tile_index, tiles_from_georeferencing

POINTS = [(1.5, 2.5, "shop", "retail"), (3.0, -1.0, "bank", "service"), (0.0, 0.0, "cafe", "food")]


def test_csv_geojson_gpkg_agree(tmp_path):
    (tmp_path / "p.csv").write_text("x,y,category,parent\n" + "".join(f"{x},{y},{c},{p}\n" for x, y, c, p in POINTS))
    feats = [{"type": "Feature", "geometry": {"type": "Point", "coordinates": [x, y]},
              "properties": {"category": c, "parent": p}} for x, y, c, p in POINTS]
    (tmp_path / "p.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    gpd.GeoDataFrame({"category": [p[2] for p in POINTS], "parent": [p[3] for p in POINTS]},
                     geometry=shapely.points([p[:2] for p in POINTS]), crs="EPSG:32651").to_file(tmp_path / "p.gpkg")
    got = [read_pois(str(tmp_path / f"p.{e}"), parent_col="parent") for e in ("csv", "geojson", "gpkg")]
    for p in got:
        assert np.allclose(p.xy, [pt[:2] for pt in POINTS])
        assert p.category.tolist() == [pt[2] for pt in POINTS] and p.parent.tolist() == [pt[3] for pt in POINTS]
    assert got[0].crs is None and got[1].crs == "EPSG:4326" and got[2].crs == "EPSG:32651"


def test_missing_column_names_the_file(tmp_path):
    (tmp_path / "p.csv").write_text("lon,lat,kind\n1,2,a\n")
    with pytest.raises(InputError, match=r"p\.csv has no column 'x', 'y', 'category'"):
        read_pois(str(tmp_path / "p.csv"))


def test_world_file_and_index_name_without_extension(tmp_path):
    Image.new("RGB", (4, 2)).save(tmp_path / "a.png")
    # 10 m pixels; (105, 1995) is the centre of the top-left pixel
    (tmp_path / "a.pgw").write_text("10\n0\n0\n-10\n105\n1995\n")
    t = tiles_from_georeferencing(str(tmp_path))
    assert np.allclose(t.bounds, [[100, 1980, 140, 2000]])
    (tmp_path / "i.csv").write_text("name,minx,miny,maxx,maxy\na,0,0,1,1\n")
    assert read_tile_index(str(tmp_path / "i.csv"), str(tmp_path)).paths[0].endswith("a.png")
    (tmp_path / "i.csv").write_text("name,minx,miny,maxx,maxy\na,0,0,0,1\n")
    with pytest.raises(InputError, match="invalid bounds"):
        read_tile_index(str(tmp_path / "i.csv"), str(tmp_path))
