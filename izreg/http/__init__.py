"""The thin HTTP layer: Klein routes over L{izreg.registry.Registry}."""
