"""Data layer: images, triplet files, catalogs, the sample catalog, the dataset registry, downloads."""
