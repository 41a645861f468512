"""Storage: content-addressed blob files, upload sessions and the LMDB index."""
