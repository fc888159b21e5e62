"""The model registry under races: two registrations at once (two sessions, two threads) both land, under distinct
names and distinct file prefixes, with nothing overwritten; fetched copies are cached by content hash; a changed
shipped starter model is registered as a new version."""
from __future__ import annotations

import json
import secrets
import threading

import pytest
from sqlalchemy import select

from backend.loop import registry
from backend.store import db as dbmod
from backend.store.models import ModelVersion, Project
from backend.store.projects import create_project
from backend.store.storage import storage_from_url


def _model_folder(path, payload: bytes):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"backbone": "tiny", "channels": ["nuclear", "membrane"]}))
    (path / "model.keras").write_bytes(payload)
    return path


def _database(tmp_path, kind, request):
    url = request.getfixturevalue("pg_url") if kind == "postgresql" else f"sqlite:///{tmp_path / 'db.sqlite'}"
    dbmod.upgrade(url)
    return dbmod.make_sessionmaker(dbmod.make_engine(url))


def _race(targets):
    """Run the callables in threads at once; their results (or exceptions) in order."""
    results = [None] * len(targets)

    def run(i):
        try:
            results[i] = targets[i]()
        except Exception as exc:  # noqa: BLE001 - the test inspects what each racer got
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(targets))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_two_registrations_racing_for_the_next_name_both_land_without_overwriting(tmp_path, monkeypatch, kind,
                                                                                   request):
    make_session = _database(tmp_path, kind, request)
    storage = storage_from_url(str(tmp_path / "storage"))
    setup = make_session()
    create_project(setup, name="p", channel_names=["DAPI", "CD45"])
    setup.commit()
    setup.close()
    folders = [_model_folder(tmp_path / f"m{i}", secrets.token_bytes(2000)) for i in range(2)]

    both_named = threading.Barrier(2, timeout=30)
    original = registry.next_name
    first_call = threading.local()

    def next_name_then_wait(session, project):
        name = original(session, project)
        if not getattr(first_call, "done", False):
            first_call.done = True
            both_named.wait()  # both registrations have picked the same free name before either inserts
        return name

    monkeypatch.setattr(registry, "next_name", next_name_then_wait)

    def register(i):
        session = make_session()
        try:
            project = session.scalar(select(Project).where(Project.name == "p"))
            row = registry.register(session, storage, project, folders[i], parent=None)
            return row.name, row.path, row.files_sha256
        finally:
            session.close()

    results = _race([lambda: register(0), lambda: register(1)])
    assert all(isinstance(r, tuple) for r in results), results
    assert sorted(r[0] for r in results) == ["p-v1", "p-v2"]
    assert results[0][1] != results[1][1]
    # each row's files are its own folder's, byte for byte
    check = make_session()
    cache = tmp_path / "cache"
    for i, (name, _, sha) in enumerate(results):
        row = check.scalar(select(ModelVersion).where(ModelVersion.name == name))
        assert row.files_sha256 == sha == registry.files_hash(folders[i])
        local = registry.local_folder(storage, row, cache)
        assert (local / "model.keras").read_bytes() == (folders[i] / "model.keras").read_bytes()
    check.close()


def test_a_taken_name_is_refused_cleanly_and_the_loser_leaves_no_files(tmp_path, monkeypatch):
    make_session = _database(tmp_path, "sqlite", None)
    storage = storage_from_url(str(tmp_path / "storage"))
    folders = [_model_folder(tmp_path / f"m{i}", secrets.token_bytes(500)) for i in range(2)]
    # both pass the early name check before either inserts: the unique constraint decides
    gate = threading.Barrier(2, timeout=30)

    def register(i):
        session = make_session()

        def scalar_after_both_checked(*args, **kwargs):
            value = type(session).scalar(session, *args, **kwargs)
            if not getattr(session, "_checked", False):
                session._checked = True
                gate.wait()
            return value

        session.scalar = scalar_after_both_checked
        try:
            return registry.register(session, storage, None, folders[i], name="shared", parent=None).path
        finally:
            session.close()

    results = _race([lambda: register(0), lambda: register(1)])
    winners = [r for r in results if isinstance(r, str)]
    losers = [r for r in results if isinstance(r, Exception)]
    assert len(winners) == 1 and len(losers) == 1 and isinstance(losers[0], ValueError), results
    assert "exists already" in str(losers[0])
    assert {k.split("/")[1] for k in storage.list("models/")} == {winners[0].split("/")[1]}


def test_fetched_copies_are_cached_by_content_hash(tmp_path):
    """Two installations share one cache folder and each has a version named p-v1 with other files: each gets its
    own; files that changed in storage are refused, never served."""
    cache = tmp_path / "shared-cache"
    got = []
    for i in range(2):
        (tmp_path / f"site{i}").mkdir()
        make_session = _database(tmp_path / f"site{i}", "sqlite", None)
        session = make_session()
        storage = storage_from_url(str(tmp_path / f"site{i}" / "storage"))
        project = create_project(session, name="p", channel_names=["DAPI", "CD45"])
        session.commit()
        folder = _model_folder(tmp_path / f"site{i}" / "model", f"weights of site {i}".encode())
        row = registry.register(session, storage, project, folder, parent=None)
        assert row.name == "p-v1"
        local = registry.local_folder(storage, row, cache)
        assert local.name == f"sha256-{row.files_sha256}"
        got.append((local / "model.keras").read_bytes())
        if i == 1:
            storage.put(f"{row.path}/model.keras", b"tampered")
            with pytest.raises(LookupError, match="do not match"):
                registry.local_folder(storage, row, tmp_path / "fresh-cache")
        session.close()
    assert got == [b"weights of site 0", b"weights of site 1"]


def test_a_changed_shipped_starter_is_a_new_version(tmp_path, monkeypatch):
    from pipeline.model import starter

    make_session = _database(tmp_path, "sqlite", None)
    session = make_session()
    storage = storage_from_url(str(tmp_path / "storage"))
    project = create_project(session, name="p", channel_names=["DAPI", "CD45"])
    session.commit()
    shipped = _model_folder(tmp_path / "shipped", b"release 1")
    monkeypatch.setattr(starter, "starter_model_dir", lambda: shipped)

    first = registry.starter_version(session, storage)
    assert first.name == "starter" and registry.starter_version(session, storage).id == first.id
    assert registry.current_model(session, storage, project).version.id == first.id

    (shipped / "model.keras").write_bytes(b"release 2, retrained")
    second = registry.starter_version(session, storage)
    assert second.id != first.id and second.name == "starter-2" and registry.is_starter(second)
    assert second.files_sha256 == registry.files_hash(shipped) != first.files_sha256
    assert "changed" in second.config["note"]
    assert registry.current_model(session, storage, project).version.id == second.id
    local = registry.local_folder(storage, second, tmp_path / "cache")
    assert (local / "model.keras").read_bytes() == b"release 2, retrained"
    # the old release stays registered and fetchable (its files were never overwritten)
    assert (registry.local_folder(storage, first, tmp_path / "cache") / "model.keras").read_bytes() == b"release 1"
    session.close()
