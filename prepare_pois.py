"""Turn a mosaic (or tiles already cut), POIs and targets into the layout ``mmgr.py`` and the downstream scripts read.

    python prepare_pois.py --mosaic city.tif --tile_size_m 500 [--tile_px 256] [--bands 3,2,1] \
        [--pois pois.gpkg | pois.csv | city.osm.pbf] [--category_col category] [--parent_col parent] \
        [--target pop1km=census.gpkg:POP] [--target gdp1km=gdp.tif] [--split block] --out OUT_DIR

    python prepare_pois.py --tiles TILE_DIR [--tile_index tile_index.csv] --pois pois.csv --out OUT_DIR

See docs/real_data.md for the formats, the tiling grid, the target allocation rules, the split and the
edge-weight formula. Exit statuses: 0 done, 2 a user error (one sentence), 74 a write the storage refused,
75 OUT_DIR is being written by another preparation (docs/run_folder.md).
"""

from __future__ import annotations

import argparse

from prepare.pipeline import PrepareConfig, prepare
from utils.errors import run_main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    _imagery_flags(p)
    _poi_flags(p)
    _target_flags(p)
    _graph_flags(p)
    _output_flags(p)
    return p


def _imagery_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("imagery (give --mosaic or --tiles)")
    g.add_argument(
        "--mosaic",
        default=None,
        help="one large georeferenced raster GDAL reads (GeoTIFF, VRT, ...) in a projected CRS, cut "
        "here into square tiles (default: none)",
    )
    g.add_argument(
        "--tile_size_m",
        type=float,
        default=None,
        help="tile side in ground units of the mosaic's CRS, e.g. 1000 for 1 km (required with --mosaic)",
    )
    g.add_argument(
        "--tile_px",
        type=int,
        default=None,
        help="tile side in pixels; each tile is resampled to this size (default: the native size, "
        "tile_size_m / pixel size, rounded)",
    )
    g.add_argument(
        "--bands",
        default=None,
        help="1-based bands of the mosaic as R,G,B, e.g. 3,2,1 (Landsat 8: 4,3,2), or one band repeated to "
        "grey RGB (default: the first three, or band 1; the first line printed names the bands used)",
    )
    g.add_argument(
        "--nodata",
        type=float,
        default=None,
        help="the mosaic's nodata value for every band, used instead of its own tag without editing the file, "
        "e.g. 0 for a scene's zero fill (default: the file's nodata tag or mask, if any)",
    )
    g.add_argument(
        "--max_nodata",
        type=float,
        default=0.5,
        help="skip (and count) tiles with a larger fraction of nodata pixels (default: 0.5, ours)",
    )
    g.add_argument("--tiles", default=None, help="folder of tile images already cut (PNG/JPEG/GeoTIFF) (default: none)")
    g.add_argument(
        "--tile_index",
        default=None,
        help="CSV name,minx,miny,maxx,maxy of the bounds of --tiles (default: read each tile's own "
        "georeferencing: GeoTIFF tags or a world file)",
    )
    g.add_argument(
        "--tile_crs",
        default=None,
        help="CRS of --tiles' bounds (default: the images' own CRS; with --tile_index, the POIs')",
    )
    g.add_argument(
        "--image_mode",
        default="copy",
        choices=["copy", "hardlink", "symlink"],
        help="how --tiles images are put into OUT/sub_shanghai_img (default: copy)",
    )
    g.add_argument(
        "--convert_tiff",
        action="store_true",
        help="write 8-bit GeoTIFF --tiles as RGB PNG (default: off, GeoTIFFs are placed as they are)",
    )


def _poi_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("POIs (optional: without --pois every tile has zero POIs, image-only pretraining)")
    g.add_argument(
        "--pois",
        default=None,
        help="POI file: CSV with x/y columns, any vector format GDAL reads (GeoPackage, Shapefile, "
        "GeoJSON, FlatGeobuf, ...), GeoParquet, or an OpenStreetMap .osm.pbf extract (default: none)",
    )
    g.add_argument("--x_col", default="x", help="CSV column of the x / easting / longitude coordinate (default: x)")
    g.add_argument("--y_col", default="y", help="CSV column of the y / northing / latitude coordinate (default: y)")
    g.add_argument(
        "--category_col",
        default="category",
        help="column of the (second-level) category each POI is embedded by (default: category; "
        "for .osm.pbf the value of the first of amenity, shop, tourism, leisure, office, craft, "
        "healthcare, historic)",
    )
    g.add_argument(
        "--parent_col",
        default=None,
        help="column of the first-level (parent) category; pulls sibling categories together "
        "in learned embeddings (default: none; for .osm.pbf the OSM key)",
    )
    g.add_argument(
        "--osm_nodes_only",
        action="store_true",
        help="for .osm.pbf, read tagged nodes only (default off: tagged areas, e.g. a school's outline, "
        "are POIs too, at a point inside each; docs/real_data.md)",
    )
    g.add_argument("--layer", default=None, help="layer of a multi-layer vector file (default: the only layer)")
    g.add_argument(
        "--crs",
        default=None,
        help="CRS of the POI coordinates, e.g. EPSG:4326 for lon/lat (default: what the file says, "
        "else the tiles' CRS); POIs are reprojected to the tiles' CRS when they differ",
    )


def _target_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("targets and split (docs/real_data.md)")
    g.add_argument(
        "--target",
        action="append",
        default=[],
        metavar="NAME=FILE[:COLUMN]",
        help="a downstream target written as OUT/NAME/STEM.txt, repeatable: census polygons with a count "
        "column (shared among tiles by area) or a raster of counts per pixel (summed per tile; "
        "':BAND' picks a band), e.g. pop1km=census.gpkg:POP (default: none)",
    )
    g.add_argument(
        "--min_coverage",
        type=float,
        default=0.95,
        help="a tile less covered than this by the target's polygons or valid pixels gets no value "
        "and stays out of the lists (default: 0.95, ours)",
    )
    g.add_argument(
        "--split",
        default="block",
        choices=["block", "random"],
        help="train/val split of the labelled tiles: whole blocks of tiles, or single tiles at "
        "random (default: block, ours, against spatial autocorrelation)",
    )
    g.add_argument("--block_tiles", type=int, default=4, help="side of a split block in tiles (default: 4, ours)")
    g.add_argument(
        "--val_fraction", type=float, default=0.2, help="fraction of the labelled tiles in val.txt (default: 0.2, ours)"
    )
    g.add_argument("--seed", type=int, default=0, help="seed of the split (default: 0)")


def _graph_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("graph and embeddings")
    g.add_argument(
        "--embeddings",
        default=None,
        help="CSV table: a 'category' column followed by the vector (any width), e.g. another city's "
        "OUT/category_embeddings.csv to share its vocabulary; a category missing from it takes its parent's "
        "vector ('parent/child', an OSM key=value's key, or --parent_col / the OSM key), else its POIs are "
        "dropped; both counted in the summary (default: learn vectors here)",
    )
    g.add_argument(
        "--embed_dim",
        type=int,
        default=None,
        help="width of learned vectors (default: 64, the width the published POI encoder takes)",
    )
    g.add_argument(
        "--hierarchy_weight",
        type=float,
        default=0.5,
        help="weight of the category-parent link relative to a category's co-location counts in "
        "learned embeddings (needs a parent) (default: 0.5)",
    )
    g.add_argument(
        "--max_edge_length",
        type=float,
        default=None,
        help="cut Delaunay edges longer than this, in the tiles' CRS units (default: keep all)",
    )


def _output_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("output")
    g.add_argument("--out", required=True, help="output folder (required)")
    g.add_argument("--overwrite", action="store_true", help="replace an earlier preparation in --out (default: refuse)")
    g.add_argument("--workers", type=int, default=1, help="processes cutting the mosaic and writing tiles (default: 1)")


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    cfg = PrepareConfig(**vars(args))
    # UserErrors (InputError 2, WriteFailed 74, FolderBusy 75): run_main prints the sentence and exits with the code
    summary = prepare(cfg)
    if summary["image_only"]:
        pois = "no --pois: every tile has 0 POIs (image-only pretraining)"
    else:
        dropped = [
            (summary["pois_skipped_no_category"], "without a category"),
            (summary["pois_skipped_bad_coordinates"], "with bad coordinates"),
            (summary["pois_skipped_not_point"], "not points"),
            (summary["pois_dropped_category_not_in_table"], "of a category not in --embeddings"),
        ]
        pois = (
            f"{summary['pois_used']} of {summary['pois_in_file']} POIs ({summary['pois_outside_every_tile']} outside "
            f"every tile; dropped: {', '.join(f'{n} {why}' for n, why in dropped if n) or 'none'})"
        )
    labelled = ""
    if summary["split"]:
        labelled = f", {summary['split']['train']} train + {summary['split']['val']} val labelled tiles"
    print(
        f"done: {summary['tiles']} tiles ({summary['tiles_without_poi']} without POI), {pois}{labelled} "
        f"-> {args.out} ({summary['seconds']:.1f}s)"
    )
    return summary


if __name__ == "__main__":
    run_main(main)
