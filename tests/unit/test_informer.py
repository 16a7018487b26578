"""virtfleet.kube.informer against a local aiohttp server that answers as the API server would: a list in
pages, watch events (a change to no fact wakes nobody), a 410 that makes it list again, and objects
deleted while it was not watching unfiled by that list."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web
from test_kube_client import served

from virtfleet.api.labels import ORDINAL_LABEL, POOL_LABEL
from virtfleet.handlers.indexes import NOT_LAUNCHERS, POD_INDEXERS, VM_INDEXERS
from virtfleet.kube.client import PODS, VIRTUAL_MACHINES
from virtfleet.kube.informer import Changed, Informer

WEB = ("ns", "web")


def vm(name: str, version: int, pool: str | None = "web", **annotations: str) -> dict[str, Any]:
    labels = {POOL_LABEL: pool, ORDINAL_LABEL: name.rsplit("-", 1)[1]} if pool else {}
    return {"metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}", "resourceVersion": str(version),
                         "labels": labels, "annotations": annotations}}  # fmt: skip


class FakeServer:
    """Lists `objects` two at a time; each watch plays the next script of events, then ends."""

    def __init__(self, objects: list[dict[str, Any]], watches: list[list[dict[str, Any]]]) -> None:
        self.objects, self.watches = objects, watches
        self.requests: list[dict[str, str]] = []
        self.last_watch = asyncio.Event()
        self.done = asyncio.Event()  # set when the test ends: a watch held open returns

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(dict(request.query))
        if request.query.get("watch") != "true":
            start = int(request.query.get("continue") or 0)
            limit = int(request.query["limit"])
            page = self.objects[start : start + limit]
            more = start + limit < len(self.objects)
            return web.json_response({"metadata": {"resourceVersion": "100", "continue": str(start + limit) if more else ""},
                                      "items": page})  # fmt: skip
        response = web.StreamResponse()
        await response.prepare(request)
        if not self.watches:
            self.last_watch.set()
            await self.done.wait()
        for event in self.watches.pop(0):
            await response.write(json.dumps(event).encode() + b"\n")
        await response.write_eof()
        return response


def members(informer: Informer) -> list[str]:
    return sorted(m.name for m in informer.indexes["pool_members"].get(WEB, ()))


async def test_it_lists_in_pages_follows_the_watch_and_lists_again_after_a_410() -> None:
    first = [vm(f"web-{i}", 10 + i) for i in range(5)] + [vm("loner-0", 20, pool=None)]
    server = FakeServer(first, [
        [
            {"type": "MODIFIED", "object": vm("web-0", 101, **{"example.com/note": "no fact changes"})},
            {"type": "DELETED", "object": vm("web-1", 102)},
            {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "103"}}},
            {"type": "ADDED", "object": vm("web-5", 104)},
        ],
        [{"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old resource version"}}],
    ])  # fmt: skip
    told: list[Changed] = []
    async for kube in served(server.handle):
        informer = Informer(kube, VIRTUAL_MACHINES, VM_INDEXERS, told.append, page=2)
        task = asyncio.create_task(informer.run())
        try:
            await asyncio.wait_for(informer.synced.wait(), 5)
            # While it lists again after the 410, web-3 is gone (deleted while nobody watched).
            server.objects = [o for o in first if o["metadata"]["name"] not in ("web-1", "web-3")] + [
                vm("web-5", 104)
            ]
            await asyncio.wait_for(server.last_watch.wait(), 5)
        finally:
            task.cancel()
            server.done.set()
        assert members(informer) == ["web-0", "web-2", "web-4", "web-5"]
        assert "loner-0" not in {m.name for facts in informer.indexes["pool_members"].values() for m in facts}

    lists = [r for r in server.requests if "watch" not in r]
    watches = [r for r in server.requests if "watch" in r]
    assert [r.get("continue", "") for r in lists] == ["", "2", "4", "", "2", "4"]  # pages of 2, twice
    assert all(r["limit"] == "2" for r in lists)
    # Each watch resumes where the last left off: the list's version, then the last event's.
    assert [w["resourceVersion"] for w in watches] == ["100", "104", "100"]
    # The first list filed the pool; the MODIFIED event changed no fact and told nobody; the deletion,
    # the new VM and the second list's loss of web-3 each woke the pool.
    assert told == [{"pool_members": {WEB}}] * 4


async def test_a_failed_list_is_retried_and_nothing_is_synced_before() -> None:
    calls = 0
    done = asyncio.Event()

    async def flaky(request: web.Request) -> web.StreamResponse:
        nonlocal calls
        calls += 1
        if calls == 1:
            return web.json_response({"kind": "Status", "code": 500, "message": "etcd is sad"}, status=500)
        if request.query.get("watch") == "true":
            await done.wait()
            return web.Response()
        return web.json_response({"metadata": {"resourceVersion": "7"}, "items": [vm("web-0", 7)]})

    async for kube in served(flaky):
        informer = Informer(kube, VIRTUAL_MACHINES, VM_INDEXERS, page=10)
        task = asyncio.create_task(informer.run())
        try:
            await asyncio.sleep(0.5)
            assert not informer.synced.is_set()  # readers keep waiting: no half-known fleet
            await asyncio.wait_for(informer.synced.wait(), 10)
        finally:
            task.cancel()
            done.set()
        assert members(informer) == ["web-0"]


async def test_an_operator_confined_to_namespaces_lists_and_watches_each_of_them() -> None:
    paths: list[str] = []
    done = asyncio.Event()

    async def per_namespace(request: web.Request) -> web.StreamResponse:
        paths.append(request.path)
        namespace = request.path.split("/namespaces/")[1].split("/")[0]
        if request.query.get("watch") == "true":
            await done.wait()
            return web.Response()
        body = vm("web-0", 5)
        body["metadata"].update(namespace=namespace, uid=f"uid-{namespace}")
        return web.json_response({"metadata": {"resourceVersion": "5"}, "items": [body]})

    async for kube in served(per_namespace):
        informer = Informer(kube, VIRTUAL_MACHINES, VM_INDEXERS, namespaces=["a", "b"])
        task = asyncio.create_task(informer.run())
        try:
            await asyncio.wait_for(informer.synced.wait(), 5)
        finally:
            task.cancel()
            done.set()
        assert sorted(informer.indexes["pool_members"]) == [("a", "web"), ("b", "web")]
    assert sorted(set(paths)) == [f"/apis/kubevirt.io/v1/namespaces/{n}/virtualmachines" for n in ("a", "b")]


async def test_a_label_selector_keeps_excluded_objects_off_the_wire() -> None:
    queries: list[dict[str, str]] = []
    done = asyncio.Event()

    async def answer(request: web.Request) -> web.StreamResponse:
        queries.append(dict(request.query))
        if request.query.get("watch") == "true":
            await done.wait()
            return web.Response()
        pod = {"metadata": {"name": "etcd", "namespace": "kube-system", "uid": "u1"},
               "spec": {"nodeName": "n1", "containers": [{"resources": {"requests": {"cpu": "100m"}}}]}}  # fmt: skip
        return web.json_response({"metadata": {"resourceVersion": "9"}, "items": [pod]})

    async for kube in served(answer):
        informer = Informer(kube, PODS, POD_INDEXERS, label_selector=NOT_LAUNCHERS)
        task = asyncio.create_task(informer.run())
        try:
            await asyncio.wait_for(informer.synced.wait(), 5)
            while len(queries) < 2:  # the watch follows the list
                await asyncio.sleep(0.01)
        finally:
            task.cancel()
            done.set()
        assert informer.indexes["other_pods"]["n1"] == [(100, 0)]
    assert [q["labelSelector"] for q in queries] == ["kubevirt.io!=virt-launcher"] * 2
