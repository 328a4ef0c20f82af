"""The built-in synthetic city (docs/synthetic_city.md): ``city`` draws it in both training layouts with its
targets, ``raw`` writes it again as the raw files a real city arrives as (a GeoTIFF mosaic, POIs, census)."""
