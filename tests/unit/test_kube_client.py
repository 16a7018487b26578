"""virtfleet.kube.client: classifying the API server's refusals (the bodies are the API server's own), and the
client's HTTP against a local aiohttp server that answers as the API server would."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable

import pytest
from aiohttp import web

from virtfleet.kube.client import (
    MERGE_PATCH,
    NODES,
    PODS,
    ApiError,
    Conflict,
    Kube,
    NotFound,
    namespace_terminating,
)
from virtfleet.kube.credentials import Credentials


def refusal(status: int, body: object) -> ApiError:
    return ApiError(status, "Forbidden", body if isinstance(body, str) else json.dumps(body))


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


async def served(handler: Callable[..., object]) -> AsyncIterator[Kube]:
    """A Kube against a local HTTP server whose every request `handler` answers."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)  # type: ignore[arg-type]
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    kube = Kube(Credentials(server=f"http://127.0.0.1:{port}", token="t0ken"), "test")
    try:
        yield kube
    finally:
        await kube.close()
        await runner.cleanup()


@pytest.mark.parametrize(("status", "kind"), [(404, NotFound), (409, Conflict), (422, ApiError)])
async def test_refusals_are_typed_and_stay_api_errors(status: int, kind: type[ApiError]) -> None:
    async def refuse(_: web.Request) -> web.Response:
        return web.json_response({"kind": "Status", "code": status, "message": "no"}, status=status)

    async for kube in served(refuse):
        with pytest.raises(ApiError) as raised:
            await kube.get(NODES, None, "n0")
    assert type(raised.value) is kind and raised.value.status == status
    assert json.loads(raised.value.body)["code"] == status
    assert str(raised.value).endswith(": no")  # the API server's message, for logs and events


async def test_writes_are_strict_merge_patches_with_our_credentials() -> None:
    seen: list[tuple[str, str, dict[str, str], str, str | None, object]] = []
    counted: list[tuple[str, int]] = []

    async def record(request: web.Request) -> web.Response:
        body = await request.json() if request.can_read_body else None
        seen.append((request.method, request.path, dict(request.query), request.content_type,
                     request.headers.get("Authorization"), body))  # fmt: skip
        return web.json_response({"kind": "Pod", "metadata": {"name": "p"}})

    async for kube in served(record):
        kube.on_response = lambda verb, code: counted.append((verb, code))
        result = await kube.patch(PODS, "ns", "p", {"metadata": {"labels": {"a": None}}})
    assert result["metadata"]["name"] == "p"
    method, path, query, content_type, authorization, body = seen[0]
    assert (method, path, content_type, authorization) == (
        "PATCH", "/api/v1/namespaces/ns/pods/p", MERGE_PATCH, "Bearer t0ken",
    )  # fmt: skip
    assert query == {"fieldManager": "test", "fieldValidation": "Strict"}
    assert body == {"metadata": {"labels": {"a": None}}}  # null removes the label: sent as it is
    assert counted == [("patch", 200)]


async def test_throttled_requests_are_retried_as_the_server_asks() -> None:
    calls = 0

    async def throttle_once(_: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            return web.json_response(
                {"kind": "Status", "code": 429}, status=429, headers={"Retry-After": "0"}
            )
        return web.json_response({"kind": "NodeList", "items": []})

    async for kube in served(throttle_once):
        assert await kube.list(NODES) == {"kind": "NodeList", "items": []}
    assert calls == 2


async def test_a_watch_yields_events_line_by_line_even_large_ones() -> None:
    big = {
        "type": "ADDED",
        "object": {"kind": "Pod", "metadata": {"name": "p", "annotations": {"a": "x" * 200_000}}},
    }
    bookmark = {"type": "BOOKMARK", "object": {"kind": "Pod", "metadata": {"resourceVersion": "9"}}}

    async def stream(request: web.Request) -> web.StreamResponse:
        assert request.query["watch"] == "true" and request.query["resourceVersion"] == "5"
        response = web.StreamResponse()
        await response.prepare(request)
        for event in (big, bookmark):
            await response.write(json.dumps(event).encode() + b"\n")
        await response.write_eof()
        return response

    async for kube in served(stream):
        events = [event async for event in kube.watch(PODS, "5", "ns")]
    assert events == [big, bookmark]
