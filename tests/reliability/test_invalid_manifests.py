"""The invalid-manifest corpus (tests/data/invalid/): every file is refused at admission by the real
API server, the refusal names the faulty field, and nothing is stored, so nothing reaches the operator.

Each corpus file is one object with one fault and a header naming the field the API server must
report, one `# expect: <path>` line per field (every one must appear):

    # case: replicas above its maximum of 10000
    # expect: spec.replicas

File names read `<kind>-<category>-<what>.yaml`; categories are listed in CATEGORIES.
"""

from __future__ import annotations

import re
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from virtfleet import API_VERSION
from virtfleet.localcluster import LocalCluster

pytestmark = pytest.mark.integration

CORPUS = Path(__file__).resolve().parents[1] / "data" / "invalid"
FILES = sorted(CORPUS.glob("*.yaml"))
RESOURCES = {
    "VMTemplate": "vmtemplates.virtfleet.io",
    "VirtualMachinePool": "virtualmachinepools.virtfleet.io",
    "MigrationPlan": "migrationplans.virtfleet.io",
}
PREFIXES = {"template": "VMTemplate", "pool": "VirtualMachinePool", "plan": "MigrationPlan"}
CATEGORIES = {
    "type": "a value of the wrong JSON type",
    "range": "a number (or list length) outside its bounds",
    "cel": "a cross-field (CEL) rule broken",
    "unknown": "a field the schema does not have",
    "required": "a required field left out",
    "huge": "a huge string, list, map or number",
    "empty": "an empty string where one is required",
    "unicode": "non-ASCII names or labels",
    "quantity": "a malformed resource quantity",
    "enum": "a value outside an enum",
    "pattern": "a string that does not match its pattern",
    "format": "a string that is not in its format (date-time)",
    "duplicate": "a repeated key in a list map",
}
MIN_CASES = 45
_EXPECT = re.compile(r"^#\s*expect:\s*(\S+)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class Case:
    path: Path
    kind: str
    category: str
    expect: tuple[str, ...]
    text: str


def load(path: Path) -> Case:
    text = path.read_text(encoding="utf-8")
    documents = [d for d in yaml.safe_load_all(text) if d is not None]
    assert len(documents) == 1, f"{path.name}: one object per file"
    (body,) = documents
    prefix, category = path.stem.split("-")[:2]
    assert body.get("apiVersion") == API_VERSION, f"{path.name}: apiVersion"
    assert body.get("kind") == PREFIXES.get(prefix), f"{path.name}: kind does not match the file prefix"
    assert category in CATEGORIES, f"{path.name}: unknown category {category!r}"
    assert "namespace" not in (body.get("metadata") or {}), f"{path.name}: the test picks the namespace"
    expect = tuple(_EXPECT.findall(text))
    assert expect, f"{path.name}: no '# expect: <field path>' line"
    return Case(path, body["kind"], category, expect, text)


def names_field(message: str, path: str) -> bool:
    """True when `message` names `path` itself, not merely a longer path that starts with it."""
    return re.search(rf"(?<![\w.]){re.escape(path)}(?![\w.\[])", message) is not None


def test_the_corpus_is_large_and_covers_every_kind_and_category() -> None:
    cases = [load(p) for p in FILES]
    assert len(cases) >= MIN_CASES
    kinds = Counter(c.kind for c in cases)
    assert set(kinds) == set(RESOURCES) and min(kinds.values()) >= 10, kinds
    assert {c.category for c in cases} == set(CATEGORIES)
    names = [yaml.safe_load(c.text)["metadata"]["name"] for c in cases]
    assert len(names) == len(set(names)), "object names must be unique across the corpus"


def test_field_matching_is_exact() -> None:
    message = 'spec.cpu.maxSockets: Invalid value; unknown field "spec.replica"; spec.disks[1]: Duplicate'
    assert names_field(message, "spec.cpu.maxSockets")
    assert names_field(message, "spec.replica")
    assert names_field(message, "spec.disks[1]")
    assert not names_field(message, "spec.cpu")
    assert not names_field(message, "spec.disks")
    assert not names_field(message, "cpu.maxSockets")


@pytest.fixture(scope="module")
def corpus_namespace(cluster: LocalCluster) -> Iterator[str]:
    """One namespace for the whole corpus: every case must leave it empty."""
    name = f"invalid-corpus-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false")


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_rejected_at_admission_naming_the_field(
    cluster: LocalCluster, corpus_namespace: str, path: Path
) -> None:
    case = load(path)
    result = cluster.kubectl(
        "create", "--validate=strict", "-n", corpus_namespace, "-o", "name", "-f", "-",
        input=case.text, check=False,
    )  # fmt: skip
    if result.returncode == 0:
        cluster.kubectl("delete", "-n", corpus_namespace, "-f", "-", input=case.text, check=False)
        pytest.fail(f"{path.name} was admitted: {result.stdout.strip()}")
    message = result.stderr
    # A refusal by the API server, not kubectl failing to read the file.
    assert "is invalid" in message or "Error from server" in message, message
    missing = [field for field in case.expect if not names_field(message, field)]
    assert not missing, f"{path.name}: the refusal does not name {missing}:\n{message}"


def test_nothing_from_the_corpus_was_stored(cluster: LocalCluster, corpus_namespace: str) -> None:
    listing = cluster.kubectl("get", ",".join(RESOURCES.values()), "-n", corpus_namespace, "-o", "name")
    assert listing.stdout.strip() == ""
