"""The store: server-set metadata, resource versions, history and watch subscriptions."""

from __future__ import annotations

import asyncio

import pytest

from runner_driver.emulator.store import ApiError, Store


def fresh() -> Store:
    """A store with the default namespace."""
    store = Store(history_limit=5)
    store.create("namespaces", "", {"metadata": {"name": "default"}})
    return store


def test_create_sets_server_metadata() -> None:
    """Creation fills uid, resourceVersion, creationTimestamp, kind and apiVersion."""
    store = fresh()
    obj = store.create("secrets", "default", {"metadata": {"name": "s"}})
    meta = obj["metadata"]
    assert meta["uid"] and meta["creationTimestamp"].endswith("Z")
    assert int(meta["resourceVersion"]) == store.resource_version
    assert (obj["kind"], obj["apiVersion"]) == ("Secret", "v1")


def test_generate_name_and_conflicts() -> None:
    """generateName yields distinct names; a taken name is 409 AlreadyExists."""
    store = fresh()
    names = {store.create("secrets", "default", {"metadata": {"generateName": "job-"}})
             ["metadata"]["name"] for _ in range(20)}
    assert len(names) == 20 and all(n.startswith("job-") and len(n) == 9 for n in names)
    store.create("secrets", "default", {"metadata": {"name": "s"}})
    with pytest.raises(ApiError) as caught:
        store.create("secrets", "default", {"metadata": {"name": "s"}})
    assert (caught.value.code, caught.value.reason) == (409, "AlreadyExists")


def test_invalid_names_and_missing_namespace() -> None:
    """Bad names are 422 Invalid; a missing namespace is 404."""
    store = fresh()
    with pytest.raises(ApiError) as caught:
        store.create("secrets", "default", {"metadata": {"name": "Not_Valid"}})
    assert caught.value.code == 422
    with pytest.raises(ApiError) as caught:
        store.create("secrets", "elsewhere", {"metadata": {"name": "s"}})
    assert (caught.value.code, caught.value.message) == (404, 'namespaces "elsewhere" not found')


def test_watch_replays_history_and_expires_old_versions() -> None:
    """A watch resumes from a resource version, and one older than the history is 410 Expired."""
    async def scenario() -> None:
        store = fresh()
        start = store.resource_version
        store.create("secrets", "default", {"metadata": {"name": "a"}})
        store.create("secrets", "default", {"metadata": {"name": "b"}})
        watcher, initial = store.watch("secrets", "default", lambda o: True, start)
        assert [e.obj["metadata"]["name"] for e in initial] == ["a", "b"]
        store.remove("secrets", "default", "a")
        event = await asyncio.wait_for(watcher.queue.get(), 1)
        assert event is not None and event.type == "DELETED"
        store.unwatch(watcher)
        store.compact()
        with pytest.raises(ApiError) as caught:
            store.watch("secrets", "default", lambda o: True, start)
        assert (caught.value.code, caught.value.reason) == (410, "Expired")

    asyncio.run(scenario())


def test_bounded_history_compacts_oldest() -> None:
    """When history is full the oldest versions become too old to watch from."""
    async def scenario() -> None:
        store = fresh()
        first = store.resource_version
        for index in range(10):
            store.create("secrets", "default", {"metadata": {"name": f"s{index}"}})
        with pytest.raises(ApiError):
            store.watch("secrets", "default", lambda o: True, first)
        watcher, initial = store.watch("secrets", "default", lambda o: True,
                                       store.resource_version - 2)
        assert len(initial) == 2
        store.unwatch(watcher)

    asyncio.run(scenario())
