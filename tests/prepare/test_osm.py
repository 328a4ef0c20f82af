"""OpenStreetMap POIs: the other_tags parser, the key order, a real .osm.pbf extract, bad files."""

from collections import Counter

import numpy as np
import pyogrio
import pytest
import shapely

from prepare.geometry import repair_polygons
from prepare.osm import POI_KEYS, _poi_tags, parse_other_tags, read_osm_pois
from prepare.poi_io import read_pois
from tests.prepare.geo_helpers import HELSINKI_PBF
from utils.errors import UserError


def test_parse_other_tags():
    assert parse_other_tags(None) == {} and parse_other_tags("") == {}
    text = r'"amenity"=>"cafe","name:en"=>"Blue \"Moon\"","path"=>"a\\b","x"=>NULL,"y"=>"1=>2, 3"'
    assert parse_other_tags(text) == {"amenity": "cafe", "name:en": 'Blue "Moon"', "path": "a\\b", "y": "1=>2, 3"}
    assert parse_other_tags('"a"=>"1", junk, "b"=>"2"') == {"a": "1", "b": "2"}  # readable pairs survive


OSM_XML = """<?xml version="1.0" encoding="UTF-8"?>
<osm version="0.6" generator="test">
 <node id="1" lat="60.1" lon="24.9" version="1"><tag k="shop" v="bakery"/><tag k="amenity" v="cafe"/></node>
 <node id="2" lat="60.2" lon="24.8" version="1"><tag k="historic" v="castle"/><tag k="tourism" v="attraction"/></node>
 <node id="3" lat="60.3" lon="24.7" version="1"><tag k="highway" v="bus_stop"/></node>
 <node id="4" lat="60.4" lon="24.6" version="1"><tag k="name" v="A &quot;q&quot;"/><tag k="craft" v="brewery"/></node>
</osm>"""


def test_first_key_in_order_decides(tmp_path):
    # GDAL's OSM driver reads .osm XML like .pbf: same layers, same other_tags.
    (tmp_path / "t.osm").write_text(OSM_XML)
    o = read_osm_pois(str(tmp_path / "t.osm"))
    assert o.category.tolist() == ["cafe", "attraction", "brewery"]  # amenity before shop, tourism before historic
    assert o.parent.tolist() == ["amenity", "tourism", "craft"]
    assert np.allclose(o.x, [24.9, 24.8, 24.6]) and np.allclose(o.y, [60.1, 60.2, 60.4]) and o.crs == "EPSG:4326"
    assert (o.nodes, o.areas) == (3, 0)


def test_real_extract():
    p = read_pois(str(HELSINKI_PBF), osm_areas=False)
    assert (
        len(p.xy) == 1881 and p.crs == "EPSG:4326" and p.osm == {"nodes": 1881, "areas": 0, "areas_without_geometry": 0}
    )
    assert set(p.parent) <= set(POI_KEYS)
    assert Counter(p.parent)["amenity"] == 1006 and Counter(p.parent)["shop"] == 504
    assert Counter(p.category)["restaurant"] == 214
    # central Helsinki, in lon/lat
    assert (24.93 < p.xy[:, 0]).all() and (p.xy[:, 0] < 24.96).all() and (60.16 < p.xy[:, 1]).all()
    assert (np.diff(p.row) > 0).all()  # file order kept


def test_real_extract_areas_become_pois_inside_their_outline():
    """130 areas carry a POI key (126 closed ways, 4 multipolygons); the one the extract's edge cuts is counted,
    the 129 others are POIs at a point inside their outline, after the nodes, by the same key order."""
    nodes = read_pois(str(HELSINKI_PBF), osm_areas=False)
    p = read_pois(str(HELSINKI_PBF))
    assert p.osm == {"nodes": 1881, "areas": 129, "areas_without_geometry": 1} and len(p.xy) == 1881 + 129
    assert np.array_equal(p.xy[:1881], nodes.xy) and np.array_equal(p.category[:1881], nodes.category)
    areas = pyogrio.read_dataframe(str(HELSINKI_PBF), layer="multipolygons", on_invalid="ignore")
    cat, par = _poi_tags(areas)
    tagged = areas[(cat != "") & areas.geometry.notna().to_numpy()]
    assert len(tagged) == 129 and Counter(p.parent[1881:]) == Counter(
        par[(cat != "") & areas.geometry.notna().to_numpy()]
    )
    assert Counter(p.parent[1881:])["amenity"] == 82 and Counter(p.parent[1881:])["leisure"] == 29
    # every point lies inside its own area (point_on_surface), in file order: 2 outlines that cross themselves
    # are repaired first (a point on the raw ring's boundary would not be inside); 3 without area (too few
    # distinct nodes) get a point on what is left of them
    outlines, repaired = repair_polygons(tagged.geometry.to_numpy())
    points, flat = shapely.points(p.xy[1881:]), shapely.is_missing(outlines)
    assert repaired.sum() == 5 and flat.sum() == 3
    assert shapely.contains(outlines[~flat], points[~flat]).all()
    assert shapely.intersects(tagged.geometry.to_numpy()[flat], points[flat]).all()


def test_closed_way_areas_and_u_shapes(tmp_path):
    """A U-shaped school (its centroid outside it) gets a point inside; a closed way tagged only healthcare=*,
    which GDAL's configuration does not make an area, is an area too; an open way is not."""
    xml = OSM_XML.replace(
        "</osm>",
        "".join(
            f'<node id="{10 + k}" lat="{lat}" lon="{lon}" version="1"/>'
            for k, (lon, lat) in enumerate(
                [
                    (25.0, 60.0),
                    (25.3, 60.0),
                    (25.3, 60.3),
                    (25.2, 60.3),
                    (25.2, 60.1),
                    (25.1, 60.1),
                    (25.1, 60.3),
                    (25.0, 60.3),
                ]
            )
        )
        + '<way id="100" version="1">'
        + "".join(f'<nd ref="{10 + k}"/>' for k in [*range(8), 0])
        + '<tag k="amenity" v="school"/><tag k="shop" v="books"/></way>'
        + '<way id="101" version="1"><nd ref="10"/><nd ref="11"/><nd ref="12"/><nd ref="10"/>'
        + '<tag k="healthcare" v="clinic"/></way>'
        + '<way id="102" version="1"><nd ref="13"/><nd ref="14"/><tag k="amenity" v="bicycle_parking"/></way>'
        + "</osm>",
    )
    (tmp_path / "t.osm").write_text(xml)
    o = read_osm_pois(str(tmp_path / "t.osm"))
    assert (o.nodes, o.areas) == (3, 2) and o.category.tolist()[3:] == ["school", "clinic"]
    u = shapely.Polygon(
        [(25.0, 60.0), (25.3, 60.0), (25.3, 60.3), (25.2, 60.3), (25.2, 60.1), (25.1, 60.1), (25.1, 60.3), (25.0, 60.3)]
    )
    assert not u.contains(u.centroid) and u.contains(shapely.Point(o.x[3], o.y[3]))
    assert read_osm_pois(str(tmp_path / "t.osm"), areas=False).areas == 0


@pytest.mark.parametrize("case", ["empty", "corrupt", "truncated", "no_poi"])
def test_bad_osm_files(tmp_path, case):
    path = tmp_path / "x.osm.pbf"
    if case == "empty":
        path.write_bytes(b"")
        match = "is empty"
    elif case == "corrupt":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
        match = "cannot read .*x.osm.pbf as an OpenStreetMap PBF"
    elif case == "truncated":
        path.write_bytes(HELSINKI_PBF.read_bytes()[:300_000])
        match = "cannot read .*x.osm.pbf as an OpenStreetMap PBF"
    else:
        path = tmp_path / "x.osm"
        path.write_text(
            OSM_XML.replace('k="shop"', 'k="a"')
            .replace('k="amenity"', 'k="b"')
            .replace('k="historic"', 'k="c"')
            .replace('k="tourism"', 'k="d"')
            .replace('k="craft"', 'k="e"')
        )
        with pytest.raises(UserError, match="has no OSM node or area tagged amenity, shop"):
            read_osm_pois(str(path))
        return
    with pytest.raises(UserError, match=match) as e:
        read_pois(str(path))
    assert "\n" not in str(e.value) and "It might help" not in str(e.value)
