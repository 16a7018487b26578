"""virtfleet.kube.client: classifying the API server's refusals (no server needed: the bodies are the
API server's own)."""

from __future__ import annotations

import json

import pytest
from kubernetes_asyncio import client

from virtfleet.kube.client import NODES, ApiException, Conflict, Kube, NotFound, namespace_terminating


def refusal(status: int, body: object) -> ApiException:
    error = ApiException(status=status, reason="Forbidden")
    error.body = body if isinstance(body, str) else json.dumps(body)
    return error


TERMINATING = {
    "kind": "Status",
    "apiVersion": "v1",
    "status": "Failure",
    "message": 'controllerrevisions.apps "t-1" is forbidden: unable to create new content in namespace r '
    "because it is being terminated",
    "reason": "Forbidden",
    "details": {
        "name": "t-1",
        "group": "apps",
        "kind": "controllerrevisions",
        "causes": [
            {
                "reason": "NamespaceTerminating",
                "message": "namespace r is being terminated",
                "field": "metadata.namespace",
            }
        ],
    },
    "code": 403,
}


def test_a_terminating_namespace_is_recognised() -> None:
    assert namespace_terminating(refusal(403, TERMINATING))


def test_other_refusals_are_not() -> None:
    rbac = {**TERMINATING, "details": {"name": "t-1", "kind": "controllerrevisions"}}
    assert not namespace_terminating(refusal(403, rbac))
    assert not namespace_terminating(refusal(409, TERMINATING))
    assert not namespace_terminating(refusal(403, "not json"))
    assert not namespace_terminating(refusal(403, {"details": {"causes": ["NamespaceTerminating"]}}))
    assert not namespace_terminating(refusal(403, "[]"))


@pytest.mark.parametrize(("status", "kind"), [(404, NotFound), (409, Conflict), (422, ApiException)])
async def test_refusals_are_typed_and_stay_api_exceptions(status: int, kind: type[ApiException]) -> None:
    kube = Kube(client.ApiClient(client.Configuration()), "test")

    async def refuse(*_: object, **__: object) -> None:
        raise refusal(status, {"kind": "Status", "code": status})

    kube._api.call_api = refuse  # type: ignore[method-assign]
    with pytest.raises(ApiException) as raised:
        await kube.get(NODES, None, "n0")
    assert type(raised.value) is kind and raised.value.status == status
    assert json.loads(raised.value.body)["code"] == status
    await kube.close()
