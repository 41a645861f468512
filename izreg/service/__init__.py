"""Service wiring: configuration, storage lifecycle, listeners."""
