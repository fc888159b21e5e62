"""Difficulty triage: prelabel with the starter model scores each crop's difficulty from the model's maps, and
`publish --experts-for` sends the hardest share straight to the experts' queue (never to the crowd), where an
expert corrects and approves it like any review."""
from __future__ import annotations

import csv
import io

import pytest
from sqlalchemy import select

from backend import loop
from backend.loop import crowd
from backend.store.models import Task, TaskEvent, TaskState
from backend.store.projects import add_image, create_project
from backend.web.app import create_app
from backend.cli.admin_commands import create_user
from pipeline.synthetic import make_tissue

from ..conftest import PASSWORD, login


def test_the_hardest_crops_go_to_experts_and_the_rest_to_the_crowd(instance):
    config, session, storage = instance
    project = create_project(session, name="p", channel_names=["DAPI", "CD45"])
    X, _ = make_tissue((192, 288), seed=9, density=0.95)
    add_image(session, storage, project, X, name="im0", pixel_size_um=0.5)
    session.commit()
    batch, made = loop.create_batch(session, storage, project, "b", all_new=True, size=96, overlap=0)
    assert made == 6
    loop.prelabel_batch(session, storage, config, batch, "current")
    tasks = session.scalars(select(Task).where(Task.batch_id == batch.id).order_by(Task.id)).all()
    assert all(t.difficulty is not None and t.difficulty_detail["score_from"] == "maps" for t in tasks)
    assert len({round(t.difficulty, 6) for t in tasks}) > 1

    def with_share(share):
        return crowd.publish_crowd(session, storage, config, batch, io.StringIO(), "https://crowd.example",
                                   experts_for=share)

    out = io.StringIO()
    summary = crowd.publish_crowd(session, storage, config, batch, out, "https://crowd.example", experts_for=0.34)
    assert summary["experts"] == 3 and summary["links"] == 3
    hardest = {t.id for t in sorted(tasks, key=lambda t: -t.difficulty)[:3]}
    listed = {int(r["task_id"]) for r in csv.DictReader(io.StringIO(out.getvalue()))}
    assert listed == {t.id for t in tasks} - hardest
    session.expire_all()
    for t in tasks:
        t = session.get(Task, t.id)
        assert (t.state is TaskState.submitted) == (t.id in hardest)
    events = session.scalars(select(TaskEvent).where(TaskEvent.action == "route_to_expert")).all()
    assert {e.task_id for e in events} == hardest and all(e.actor_ref == "system" for e in events)
    # publishing again routes no more: the share is already in the experts' hands
    assert with_share(0.34)["experts"] == 3
    assert len(session.scalars(select(TaskEvent).where(TaskEvent.action == "route_to_expert")).all()) == 3

    # the experts see them in their queue, hardest first when ordered by risk, and work them as a review
    create_user(session, "rev", PASSWORD, "reviewer")
    app = create_app(config)
    client = app.test_client()
    h = {"X-CSRF-Token": login(client, "rev")}
    queue = client.get("/api/review/tasks?order=risk").get_json()["tasks"]
    assert [t["id"] for t in queue] == sorted(hardest, key=lambda i: -session.get(Task, i).difficulty)
    assert all(t["why"] == ["hard crop"] for t in queue)
    first = queue[0]["id"]
    assert client.post(f"/api/review/tasks/{first}/start", headers=h).status_code == 200
    edit = client.post(f"/api/review/tasks/{first}/edit", headers=h,
                       json={"base_revision": 0, "tool": "paint",
                             "params": {"label": 999, "radius": 2, "points": [[5, 5]], "layer": 0}})
    assert edit.status_code == 200
    assert client.post(f"/api/review/tasks/{first}/approve", headers=h, json={}).status_code == 200
    session.expire_all()
    assert session.get(Task, first).state is TaskState.approved
    # bad shares are refused with a message, changing nothing
    for share in (-0.1, 1.5):
        with pytest.raises(loop.LoopError, match="--experts-for"):
            with_share(share)
