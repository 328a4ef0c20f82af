"""OpenStreetMap POIs: the other_tags parser, the key order, a real .osm.pbf extract, bad files."""

from collections import Counter

import numpy as np
import pytest

from prepare.osm import POI_KEYS, parse_other_tags, read_osm_pois
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
    x, y, cat, par, crs = read_osm_pois(str(tmp_path / "t.osm"))
    assert cat.tolist() == ["cafe", "attraction", "brewery"]  # amenity before shop, tourism before historic
    assert par.tolist() == ["amenity", "tourism", "craft"]
    assert np.allclose(x, [24.9, 24.8, 24.6]) and np.allclose(y, [60.1, 60.2, 60.4]) and crs == "EPSG:4326"


def test_real_extract():
    p = read_pois(str(HELSINKI_PBF))
    assert len(p.xy) == 1881 and p.crs == "EPSG:4326"
    assert set(p.parent) <= set(POI_KEYS)
    assert Counter(p.parent)["amenity"] == 1006 and Counter(p.parent)["shop"] == 504
    assert Counter(p.category)["restaurant"] == 214
    # central Helsinki, in lon/lat
    assert (24.93 < p.xy[:, 0]).all() and (p.xy[:, 0] < 24.96).all() and (60.16 < p.xy[:, 1]).all()
    assert (np.diff(p.row) > 0).all()  # file order kept


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
        with pytest.raises(UserError, match="has no OSM node tagged amenity, shop"):
            read_osm_pois(str(path))
        return
    with pytest.raises(UserError, match=match) as e:
        read_pois(str(path))
    assert "\n" not in str(e.value) and "It might help" not in str(e.value)
