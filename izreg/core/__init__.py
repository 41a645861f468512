"""The pure core: names, digests, manifests, ranges and errors. No I/O here."""
