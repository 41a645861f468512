"""The ``twistd izreg`` plugin. twistd imports this file on every run: import nothing else here."""

from twisted.application.service import ServiceMaker

izreg = ServiceMaker(
    "izreg",
    "izreg.tap",
    "izreg: an OCI registry for fleets of edge gateways (izreg server | izreg edge)",
    "izreg",
)
