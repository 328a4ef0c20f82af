"""Turn raw POIs and image tiles into the pretraining layout ``mmgr.py`` reads.

    python prepare_pois.py --pois pois.csv --x_col x --y_col y --category_col category \
        [--parent_col parent] [--crs EPSG:4326] --tiles TILE_DIR [--tile_index tile_index.csv] \
        [--embeddings category_embeddings.csv | --embed_dim 64] --out OUT_DIR

See docs/prepare_pois.md for the formats, the edge-weight formula and the embedding method.
"""

from __future__ import annotations

import argparse

from utils.errors import run_main
from data.prepare import PrepareConfig, prepare


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    g = p.add_argument_group("POIs")
    g.add_argument("--pois", required=True, help="POI file: .csv, .geojson/.json or .gpkg (required)")
    g.add_argument("--x_col", default="x", help="CSV column of the x / easting / longitude coordinate (default: x)")
    g.add_argument("--y_col", default="y", help="CSV column of the y / northing / latitude coordinate (default: y)")
    g.add_argument("--category_col", default="category",
                   help="column of the (second-level) category each POI is embedded by (default: category)")
    g.add_argument("--parent_col", default=None,
                   help="column of the first-level (parent) category; pulls sibling categories together "
                        "in learned embeddings (default: none)")
    g.add_argument("--layer", default=None, help="GeoPackage layer (default: the only feature layer)")
    g.add_argument("--crs", default=None,
                   help="CRS of the POI coordinates, e.g. EPSG:4326 for lon/lat (default: what the file says, "
                        "else the tiles' CRS); POIs are reprojected to the tiles' CRS when they differ (pyproj)")
    g = p.add_argument_group("tiles")
    g.add_argument("--tiles", required=True, help="folder of tile images (PNG/JPEG/GeoTIFF) (required)")
    g.add_argument("--tile_index", default=None,
                   help="CSV name,minx,miny,maxx,maxy of tile bounds (default: read each tile's GeoTIFF "
                        "tags or world file)")
    g.add_argument("--tile_crs", default=None,
                   help="CRS of the tile bounds (default: the GeoTIFFs' own CRS; with --tile_index, the POIs')")
    g.add_argument("--image_mode", default="copy", choices=["copy", "hardlink", "symlink"],
                   help="how PNG/JPEG tiles are put into OUT/sub_shanghai_img (default: copy)")
    g.add_argument("--convert_tiff", action="store_true",
                   help="write GeoTIFF tiles as RGB PNG (default: off, GeoTIFFs are placed as they are)")
    g = p.add_argument_group("graph and embeddings")
    g.add_argument("--embeddings", default=None,
                   help="CSV table: a 'category' column followed by the vector (any width); categories "
                        "missing from it get zero vectors and are reported (default: learn vectors here)")
    g.add_argument("--embed_dim", type=int, default=None,
                   help="width of learned vectors (default: 64, the width the published POI encoder takes)")
    g.add_argument("--hierarchy_weight", type=float, default=0.5,
                   help="weight of the category-parent link relative to a category's co-location counts in "
                        "learned embeddings (needs --parent_col) (default: 0.5)")
    g.add_argument("--max_edge_length", type=float, default=None,
                   help="cut Delaunay edges longer than this, in the tiles' CRS units (default: keep all)")
    g = p.add_argument_group("output")
    g.add_argument("--out", required=True, help="output folder (required)")
    g.add_argument("--overwrite", action="store_true",
                   help="replace an earlier preparation in --out (default: refuse)")
    g.add_argument("--workers", type=int, default=1, help="processes writing tiles (default: 1)")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    cfg = PrepareConfig(**vars(args))
    summary = prepare(cfg)  # InputError is a UserError: run_main prints its sentence and exits 2
    print(f"done: {summary['tiles']} tiles ({summary['tiles_without_poi']} without POI), "
          f"{summary['pois_used']} POIs ({summary['pois_outside_every_tile']} outside every tile, "
          f"{summary['pois_skipped_bad_coordinates']} skipped for bad coordinates) -> {args.out}")
    return summary


if __name__ == "__main__":
    run_main(main)
