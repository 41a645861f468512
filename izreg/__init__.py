"""izreg: a self-hosted OCI registry for fleets of edge gateways."""

__version__ = "0.1.0"
