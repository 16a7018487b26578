"""Fixtures shared by tests/ and e2e/: one control plane for the whole pytest session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from virtfleet.localcluster.testing import SessionCluster, session_cluster


@pytest.fixture(scope="session")
def test_cluster() -> Iterator[SessionCluster]:
    """The local control plane, or with VIRTFLEET_USE_EXISTING_CLUSTER=1 the cluster KUBECONFIG names."""
    with session_cluster() as running:
        yield running
