"""Cutting a mosaic: the grid, the pixels of each tile, one stretch, nodata, bands, and bad rasters."""

import os

import numpy as np
import pytest
import rasterio
from PIL import Image
from pyproj import Transformer
from rasterio.transform import from_origin
from rasterio.warp import Resampling, reproject

from prepare import mosaic
from tests.prepare.geo_helpers import LANDSAT_CROP, write_raster
from utils.errors import UserError

X0, Y1 = 500_000.0, 3_400_000.0  # upper-left corner, UTM 51N metres


def cut(path, out, tile_size, **kw):
    g = mosaic.open_mosaic(str(path), tile_size, kw.pop("tile_px", None), kw.pop("bands", None))
    os.makedirs(out, exist_ok=True)
    return g, mosaic.cut_mosaic(g, str(out), mosaic.estimate_stretch(g), progress=False, **kw)


def png(out, name):
    with Image.open(os.path.join(out, name)) as im:
        return np.asarray(im.convert("RGB"))


def test_grid_anchored_upper_left_row_major_pixels_exact(tmp_path):
    # 130 x 100 px of 2 m; 40 m tiles = 20 px: 6 whole columns (10 px dropped), 5 rows.
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, size=(3, 100, 130), dtype=np.uint8)
    path = write_raster(tmp_path / "m.tif", a, "EPSG:32651", (X0, Y1), 2.0, tiled=True)
    g, res = cut(path, tmp_path / "out", 40.0, workers=2)
    assert (g.n_rows, g.n_cols, g.tile_px) == (5, 6, 20)
    assert res.names == sorted(res.names) and len(res.names) == 30 and res.skipped_nodata == 0
    assert res.names[7] == "r0001_c0001.png" and (res.rows[7], res.cols[7]) == (1, 1)
    assert np.allclose(res.bounds[7], [X0 + 40, Y1 - 80, X0 + 80, Y1 - 40])
    for k in (0, 7, 29):
        r, c = res.rows[k], res.cols[k]
        assert np.array_equal(
            png(tmp_path / "out", res.names[k]), a[:, r * 20 : (r + 1) * 20, c * 20 : (c + 1) * 20].transpose(1, 2, 0)
        )
    # --tile_px resamples; a non-multiple tile size leaves fractional windows
    g, res = cut(path, tmp_path / "out16", 50.0, tile_px=16)
    assert (g.n_rows, g.n_cols) == (4, 5) and png(tmp_path / "out16", res.names[0]).shape == (16, 16, 3)


def test_one_stretch_for_the_whole_mosaic(tmp_path):
    # uint16: left half dark (100..200), right half bright (1000..1100). A per-tile stretch would make
    # both halves span 0..255; one stretch keeps the left tiles dark.
    a = np.zeros((1, 40, 80), np.uint16)
    a[0, :, :40] = 100 + np.arange(40)[None, :] * 100 // 40
    a[0, :, 40:] = 1000 + np.arange(40)[None, :] * 100 // 40
    path = write_raster(tmp_path / "m.tif", a, "EPSG:32651", (X0, Y1), 1.0)
    g, res = cut(path, tmp_path / "out", 40.0)
    lo, hi = mosaic.estimate_stretch(g)[0]
    assert lo < 200 and hi > 1000
    left, right = png(tmp_path / "out", res.names[0]), png(tmp_path / "out", res.names[1])
    assert left.max() < 40 and right.min() > 200  # dark stays dark, bright stays bright
    assert np.array_equal(left[..., 0], left[..., 2])  # one band repeated to grey RGB
    expect = np.rint(np.clip((a[0, :, :40].astype(np.float32) - lo) * (255.0 / (hi - lo)), 0, 255))
    assert np.array_equal(left[..., 0], expect.astype(np.uint8))


def test_nodata_tiles_skipped_and_bands_picked(tmp_path):
    a = np.zeros((4, 20, 60), np.uint8)
    a[0], a[1], a[2], a[3] = 10, 20, 30, 40
    a[:, :, :14] = 0  # tile 0: 70 % nodata -> skipped
    a[:, :, 20:26] = 0  # tile 1: 30 % nodata -> kept, nodata painted black
    path = write_raster(tmp_path / "m.tif", a, "EPSG:32651", (X0, Y1), 1.0, nodata=0)
    g, res = cut(path, tmp_path / "out", 20.0, bands="4,2,1")
    assert res.names == ["r0000_c0001.png", "r0000_c0002.png"] and res.skipped_nodata == 1
    t1 = png(tmp_path / "out", res.names[0])
    assert t1[0, 0].tolist() == [0, 0, 0] and t1[0, 10].tolist() == [40, 20, 10]
    g, res = cut(path, tmp_path / "out2", 20.0, max_nodata=0.2)
    assert res.names == ["r0000_c0002.png"]


def test_reprojected_mosaic_lands_where_it_should(tmp_path):
    # A lon/lat raster with one bright 0.001 deg square, warped to UTM 51N as the error message advises:
    # the tile whose bounds contain the square's centre (projected with pyproj) holds the bright pixels.
    a = np.full((1, 200, 200), 50, np.uint8)
    a[0, 8:12, 10:14] = 250  # rows 8..12, cols 10..14 of 0.0001 deg pixels: about 110 m east, 110 m south
    lon0, lat1 = 121.40, 31.25
    src_tr = from_origin(lon0, lat1, 0.0001, 0.0001)
    dst = np.zeros((1, 240, 240), np.uint8)
    x, y = Transformer.from_crs("EPSG:4326", "EPSG:32651", always_xy=True).transform(lon0, lat1)
    dst_tr = from_origin(round(x) - 100, round(y) + 100, 1.0, 1.0)
    reproject(
        a,
        dst,
        src_transform=src_tr,
        src_crs="EPSG:4326",
        dst_transform=dst_tr,
        dst_crs="EPSG:32651",
        resampling=Resampling.nearest,
    )
    path = tmp_path / "utm.tif"
    with rasterio.open(
        path, "w", driver="GTiff", width=240, height=240, count=1, dtype="uint8", crs="EPSG:32651", transform=dst_tr
    ) as ds:
        ds.write(dst)
    g, res = cut(path, tmp_path / "out", 40.0)
    cx, cy = Transformer.from_crs("EPSG:4326", "EPSG:32651", always_xy=True).transform(lon0 + 0.0012, lat1 - 0.0010)
    b = res.bounds
    k = int(np.flatnonzero((b[:, 0] <= cx) & (cx < b[:, 2]) & (b[:, 1] <= cy) & (cy < b[:, 3]))[0])
    assert png(tmp_path / "out", res.names[k]).max() == 250
    assert sum(png(tmp_path / "out", n).max() == 250 for n in res.names) <= 4  # and only near there


@pytest.mark.parametrize("case", ["geographic", "no_crs", "bands", "corrupt", "missing", "too_small"])
def test_bad_mosaic_one_sentence(tmp_path, case):
    a = np.zeros((3, 20, 20), np.uint8)
    path, size, bands = tmp_path / "m.tif", 10.0, None
    if case == "geographic":
        write_raster(path, a, "EPSG:4326", (121.4, 31.2), 0.0001)
        match = (
            r"m\.tif is in a geographic CRS .* warp it to a projected CRS first, e\.g\. EPSG:32651 \(WGS 84 / "
            r"UTM zone 51N, the zone of its centre\) with gdalwarp -t_srs EPSG:32651 or rio warp"
        )
    elif case == "no_crs":
        write_raster(path, a, None, (0, 20), 1.0)
        match = r"m\.tif has no CRS; assign"
    elif case == "bands":
        write_raster(path, a, "EPSG:32651", (X0, Y1), 1.0)
        bands, match = "1,2,4", r"--bands '1,2,4' is out of range for .*m\.tif, which has 3 bands \(1\.\.3\)"
    elif case == "corrupt":
        path.write_bytes(b"II*\x00" + bytes(range(256)) * 4)
        match = r"cannot read mosaic .*m\.tif \("
    elif case == "missing":
        match = r"mosaic .*m\.tif does not exist"
    else:
        write_raster(path, a, "EPSG:32651", (X0, Y1), 1.0)
        size, match = 25.0, r"is smaller than one tile of --tile_size_m 25"
    with pytest.raises(UserError, match=match) as e:
        mosaic.open_mosaic(str(path), size, None, bands)
    assert "\n" not in str(e.value)


def test_damaged_block_found_while_cutting(tmp_path):
    # The header reads, the data does not: found only while cutting, reported in one sentence.
    rng = np.random.default_rng(0)
    path = write_raster(
        tmp_path / "m.tif", rng.integers(0, 255, (3, 64, 64), dtype=np.uint8), "EPSG:32651", (X0, Y1), 1.0, tiled=True
    )
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 3 : len(raw) // 3 + 2000] = bytes(2000)
    path.write_bytes(bytes(raw))
    # Found by the stretch's sample before anything is written, or else while cutting.
    with pytest.raises(UserError, match=r"cannot read (tile r\d+ c\d+ of )?mosaic .*m\.tif .*; the file is damaged"):
        cut(path, tmp_path / "out", 16.0)


@pytest.mark.parametrize(
    "tile_size, res, tile_px, match",
    [
        (3.0, 5.0, None, r"a tile of --tile_size_m 3 is 0\.6 px of mosaic .*; a tile must cover at least 4 px"),
        (3.0, 5.0, 256, r"a tile must cover at least 4 px of the mosaic, so give --tile_size_m 20 or more"),
        (50.0, 5.0, None, r"is 10 px of mosaic .*, under the 16 px a tile needs; give --tile_size_m 80 or more"),
        (100.0, 5.0, 8, r"--tile_px 8 is under the 16 px a tile needs"),
        (300.0, 28.5, 64, None),  # a Landsat city: 10.5 mosaic pixels enlarged to 64 px is fine
    ],
)
def test_tile_size_in_pixels(tmp_path, tile_size, res, tile_px, match):
    # 3 m tiles of a 5 m mosaic once wrote 575,718 PNGs of 1 x 1 px; now one sentence before anything is written.
    path = write_raster(tmp_path / "m.tif", np.zeros((3, 400, 400), np.uint8), "EPSG:32651", (X0, Y1), res)
    if match is None:
        g = mosaic.open_mosaic(str(path), tile_size, tile_px)
        assert g.tile_px == tile_px and g.n_rows == int(400 * res // tile_size)
        return
    with pytest.raises(UserError, match=match) as e:
        mosaic.open_mosaic(str(path), tile_size, tile_px)
    assert "\n" not in str(e.value)


def test_bands_used_are_named(tmp_path):
    a = np.zeros((4, 20, 20), np.uint8)
    path = write_raster(tmp_path / "m.tif", a, "EPSG:32651", (X0, Y1), 1.0)
    with rasterio.open(path, "r+") as ds:
        ds.descriptions = ("blue", "green", "red", "nir")
    default = mosaic.open_mosaic(str(path), 20.0).describe_bands()
    assert default.startswith("bands 1,2,3 (blue, green, red) of 4 as R,G,B (default; --bands picks others")
    assert (
        mosaic.open_mosaic(str(path), 20.0, bands="3,2,1").describe_bands()
        == "bands 3,2,1 (red, green, blue) of 4 as R,G,B"
    )
    assert mosaic.open_mosaic(str(path), 20.0, bands="4").describe_bands() == "band 4 (nir) of 4 repeated to grey RGB"


def test_unmarked_fill_on_a_real_landsat_crop(tmp_path):
    """A crop of a Landsat-8 scene (uint16, 31 % zero fill, no nodata tag): the fill drags the stretch's low end
    to 0 and is reported; --nodata 0 (a vrt:// view, the file untouched) excludes it from the stretch and
    skips the fill tiles."""
    before = LANDSAT_CROP.read_bytes()
    g = mosaic.open_mosaic(str(LANDSAT_CROP), 480.0, bands="3,2,1")
    survey = mosaic.survey_mosaic(g)
    assert survey.fill_value == 0.0 and 0.25 < survey.fill_fraction < 0.4 and survey.declared_nodata is None
    assert (survey.stretch[:, 0] == 0).all() and np.array_equal(survey.low, survey.stretch[:, 0])
    os.makedirs(tmp_path / "a")
    res = mosaic.cut_mosaic(g, str(tmp_path / "a"), survey.stretch, progress=False)
    assert res.skipped_nodata == 0 and res.flat >= 16  # the top two rows of tiles are all fill
    g0 = mosaic.open_mosaic(str(LANDSAT_CROP), 480.0, bands="3,2,1", nodata=0)
    s0 = mosaic.survey_mosaic(g0)
    assert s0.fill_value is None and s0.declared_nodata == 0.0 and (s0.stretch[:, 0] > 5000).all()
    os.makedirs(tmp_path / "b")
    res0 = mosaic.cut_mosaic(g0, str(tmp_path / "b"), s0.stretch, progress=False)
    assert res0.skipped_nodata >= 16 and res0.flat == 0 and len(res0.names) + res0.skipped_nodata == 64
    assert LANDSAT_CROP.read_bytes() == before  # nothing was written to the user's file
    with pytest.raises(UserError, match=r"--nodata -1 is not a uint16 value, .*; give an integer in \[0, 65535\]"):
        mosaic.open_mosaic(str(LANDSAT_CROP), 480.0, nodata=-1)
