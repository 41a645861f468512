"""
Both OCI distribution-spec conformance suites (head and v1.1.1) against a
fresh izreg with an account key, on each storage backend (files, and S3 on a
moto server); any failed conformance test fails this
test. In CI (``CI=true``) a missing suite binary is a failure, not a skip.
"""

from __future__ import annotations

import pytest

from tests.conftest import require_tool
from tests.helpers.conformance import SUITES, run_conformance, suite_available

pytestmark = [pytest.mark.e2e, pytest.mark.conformance]


@pytest.mark.parametrize("suite", SUITES)
def test_oci_conformance(suite, any_registry, tmp_path):
    require_tool(suite_available(suite), f"the OCI conformance suite {suite} (../shared/conformance)")
    if any_registry.backend != "izreg":
        pytest.skip("run the suites against distribution by hand: it fails many of them")
    user, _, key = any_registry.creds.partition(":")
    result = run_conformance(any_registry.url, f"{any_registry.account}/conformance/repo1", user, key,
                             suite=suite, results_dir=str(tmp_path / "results"))
    assert result.passed > 0, result.summary()
    assert result.failed == 0, result.summary()
