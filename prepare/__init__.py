"""The preparation of a real city: a mosaic, POIs, OpenStreetMap and census or raster targets become the
training input (``data/``), a tile index and train/validation splits (``prepare_pois.py``; docs/real_data.md).

One module per step: ``mosaic`` (cutting the raster into tiles), ``poi_io`` and ``osm`` (reading POIs),
``targets`` (census or land-cover polygons or rasters onto tiles), ``geometry`` (repairing polygons),
``tile_index`` (the tiles' footprints and CRS),
``splits`` (train/validation blocks), ``graph`` (each tile's POI graph), ``category_embed`` (category
vectors), and ``pipeline``, which runs them in order.
"""
