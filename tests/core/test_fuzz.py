"""
Fuzzing the parsers a client's bytes reach first (hypothesis): each either
returns or raises a RegistryError (a 4xx for the client), nothing else.
"""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.web.http_headers import Headers

from izreg.auth.policy import parse_scopes
from izreg.core import routes
from izreg.core.digest import Digest
from izreg.core.errors import RegistryError
from izreg.core.manifest import parse_manifest
from izreg.core.names import parse_reference
from izreg.core.ranges import parse_content_range, parse_range
from izreg.http.clientaddr import TrustedProxies

FUZZ = settings(max_examples=100, deadline=None)
ACCOUNT = "0123456789abcdef0123456789abcdef"
PATH_PARTS = st.sampled_from([ACCOUNT, "app", "", "manifests", "blobs", "uploads", "tags", "list", "referrers",
                              "sha256:" + "a" * 64, "v1", "_izreg", "..", "A", "-x", "a" * 260])


def only_registry_errors(f, *args):
    try:
        f(*args)
    except RegistryError as e:
        assert 400 <= e.code.status < 500, e


@FUZZ
@given(st.one_of(st.text(), st.lists(PATH_PARTS, max_size=8).map("/".join)))
def test_route_matching(path):
    only_registry_errors(routes.match, path)


@FUZZ
@given(st.text(max_size=300))
def test_digests_and_references(text):
    only_registry_errors(Digest.parse, text)
    only_registry_errors(parse_reference, text)


@FUZZ
@given(st.one_of(st.text(max_size=60), st.from_regex(r"bytes=[0-9-]{0,12}(,[0-9-]{0,12})?", fullmatch=True)),
       st.integers(min_value=0, max_value=10**12))
def test_ranges(header, total):
    only_registry_errors(parse_range, header, total)
    only_registry_errors(parse_content_range, header)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


@FUZZ
@given(st.one_of(st.binary(max_size=400), JSON_VALUES.map(lambda v: json.dumps(v).encode()),
                 st.dictionaries(st.sampled_from(["schemaVersion", "mediaType", "config", "layers", "manifests",
                                                  "subject", "annotations", "artifactType"]),
                                 JSON_VALUES, max_size=6).map(lambda v: json.dumps(v).encode())),
       st.sampled_from([None, "application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.index.v1+json",
                        "application/vnd.docker.distribution.manifest.v2+json", "text/plain"]))
def test_manifests(data, content_type):
    only_registry_errors(parse_manifest, data, content_type)


@FUZZ
@given(st.lists(st.text(max_size=80), max_size=4))
def test_scopes(values):
    parse_scopes(values)


@FUZZ
@given(st.lists(st.text(max_size=60).map(lambda t: t.encode("utf-8")), max_size=3),
       st.lists(st.text(max_size=60).map(lambda t: t.encode("utf-8")), max_size=3))
def test_forwarded_headers(forwarded, xff):
    headers = Headers()
    if forwarded:
        headers.setRawHeaders(b"forwarded", forwarded)
    if xff:
        headers.setRawHeaders(b"x-forwarded-for", xff)
    assert isinstance(TrustedProxies(["10.0.0.0/8"]).client("10.1.1.1", headers), str)
