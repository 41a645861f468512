"""izreg: a self-hosted OCI registry for fleets of edge gateways."""

__version__ = "0.1.0"


class StartupError(Exception):
    """
    Start-up failed for a reason one line explains. An C{Exception} (not
    C{SystemExit}) so that twistd removes its pidfile and passes the line to
    a daemon's parent (which shows its first 100 bytes, hence the short
    module path); L{izreg.tap} prints it instead of a traceback.
    """
