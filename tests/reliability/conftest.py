"""Fixtures of the reliability suite: the same control plane, operator and twin fixtures as
tests/integration, so both suites share the session's one control plane.

Non-root conftests cannot declare `pytest_plugins`, so tests/integration/conftest.py is loaded here
under a module name of its own and its fixtures are re-exported. Its `twin` fixture imports
`twin_helpers` from that folder, which is why the folder goes on sys.path (pytest's default "prepend"
import mode does the same whenever it collects tests/integration).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_INTEGRATION = Path(__file__).resolve().parents[1] / "integration"
if str(_INTEGRATION) not in sys.path:
    sys.path.insert(0, str(_INTEGRATION))

_spec = importlib.util.spec_from_file_location("virtfleet_integration_fixtures", _INTEGRATION / "conftest.py")
assert _spec is not None and _spec.loader is not None
_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fixtures)

cluster = _fixtures.cluster
kube = _fixtures.kube
namespace = _fixtures.namespace
operator = _fixtures.operator
twin = _fixtures.twin
