"""POI and tile readers: CSV / GeoJSON / GeoPackage give the same POIs; world files give bounds."""

import json

import geopandas as gpd
import numpy as np
import pytest
import shapely
from PIL import Image

from prepare.poi_io import InputError, read_pois, read_tile_index, tiles_from_georeferencing

POINTS = [(1.5, 2.5, "shop", "retail"), (3.0, -1.0, "bank", "service"), (0.0, 0.0, "cafe", "food")]


def test_csv_geojson_gpkg_agree(tmp_path):
    (tmp_path / "p.csv").write_text("x,y,category,parent\n" + "".join(f"{x},{y},{c},{p}\n" for x, y, c, p in POINTS))
    feats = [
        {
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [x, y]},
            "properties": {"category": c, "parent": p},
        }
        for x, y, c, p in POINTS
    ]
    (tmp_path / "p.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    gpd.GeoDataFrame(
        {"category": [p[2] for p in POINTS], "parent": [p[3] for p in POINTS]},
        geometry=shapely.points([p[:2] for p in POINTS]),
        crs="EPSG:32651",
    ).to_file(tmp_path / "p.gpkg")
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


def test_vector_formats_multipoint_and_skips(tmp_path):
    # Feature order: point, multipoint of 2, polygon (skipped), empty point (bad), point without category.
    geoms = [
        shapely.Point(1, 2),
        shapely.MultiPoint([(3, 4), (5, 6)]),
        shapely.box(0, 0, 1, 1),
        shapely.Point(),
        shapely.Point(7, 8),
    ]
    df = gpd.GeoDataFrame(
        {"category": ["a", "b", "c", "d", None], "parent": ["p", "q", "r", "s", "t"]}, geometry=geoms, crs="EPSG:3857"
    )
    paths = {"gpkg": tmp_path / "p.gpkg", "parquet": tmp_path / "p.parquet", "fgb": tmp_path / "p.fgb"}
    df.to_file(paths["gpkg"])
    df.to_parquet(paths["parquet"])
    df.to_file(paths["fgb"], driver="FlatGeobuf", SPATIAL_INDEX="NO")  # its index refuses empty geometries
    for fmt, path in paths.items():
        p = read_pois(str(path), parent_col="parent")
        assert np.allclose(p.xy, [[1, 2], [3, 4], [5, 6]]), fmt
        assert p.category.tolist() == ["a", "b", "b"] and p.parent.tolist() == ["p", "q", "q"], fmt
        assert p.row.tolist() == [0, 1, 1] and p.crs == "EPSG:3857", fmt
        assert (p.skipped_not_point, p.skipped_bad_coords, p.skipped_no_category) == (1, 1, 1), fmt
    # A Shapefile holds one geometry type: points only, in file order.
    df.iloc[[0, 4, 0]].set_geometry([shapely.Point(1, 2), shapely.Point(7, 8), shapely.Point(9, 9)]).assign(
        category=["a", "e", "f"]
    ).to_file(tmp_path / "p.shp")
    p = read_pois(str(tmp_path / "p.shp"))
    assert np.allclose(p.xy, [[1, 2], [7, 8], [9, 9]]) and p.category.tolist() == ["a", "e", "f"]


def test_vector_errors_name_the_file(tmp_path):
    gpd.GeoDataFrame({"kind": ["a"]}, geometry=[shapely.Point(0, 0)], crs="EPSG:4326").to_file(tmp_path / "p.gpkg")
    with pytest.raises(InputError, match=r"p\.gpkg has no column 'category'; its columns are 'kind'"):
        read_pois(str(tmp_path / "p.gpkg"))
    (tmp_path / "bad.gpkg").write_bytes(bytes(range(256)) * 8)
    with pytest.raises(InputError, match=r"cannot read .*bad\.gpkg as a vector file"):
        read_pois(str(tmp_path / "bad.gpkg"))
    two = tmp_path / "two.gpkg"
    for layer in ("a", "b"):
        gpd.GeoDataFrame({"category": ["x"]}, geometry=[shapely.Point(0, 0)], crs="EPSG:4326").to_file(two, layer=layer)
    with pytest.raises(InputError, match=r"several layers \(a, b\); pick one with --layer"):
        read_pois(str(two))
    assert read_pois(str(two), layer="b").category.tolist() == ["x"]
