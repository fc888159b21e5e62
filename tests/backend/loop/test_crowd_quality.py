"""Crowd quality, driven like a lab drives a paid campaign (the `cellloop` commands) with simulated workers of
different skill working through the real HTTP API: gold tasks from an expert-approved batch, a batch published with
3 replicas per crop and gold mixed in, consensus, per-worker scores and the platform's report."""
from __future__ import annotations

import base64
import csv
import json
import zlib

import numpy as np
import pytest
import tifffile
from sqlalchemy import select

from backend.cli import main
from backend.config import Config
from backend.loop.stitch import stitched_labels
from backend.store.db import make_engine, make_sessionmaker
from backend.store.models import CropAgreement, GoldScore, GoldTruth, Image, Task, TaskState
from backend.store.storage import storage_from_url
from backend.tasks import TaskService
from backend.web.app import create_app
from backend.web.localserver import serving
from pipeline import metrics, simulate
from pipeline.simulate import APIError, TaskClient
from pipeline.synthetic import make_tissue

from ..conftest import login, make_world

PASSWORD = "correct horse battery"
SIZE = 96  # crops of 96 px, four per 192-px image: enough cells per crop, few requests
SKILLS = {"careful": simulate.CAREFUL, "middling": simulate.MIDDLING, "careless": simulate.CARELESS}


def _rows(path):
    return list(csv.DictReader(open(path)))


def _token(row):
    return row["url"].rsplit("/task/", 1)[1]


def _truth_of(truths, row):
    y0, x0, y1, x1 = (int(row[k]) for k in ("y0", "x0", "y1", "x1"))
    return truths[row["image"]][y0:y1, x0:x1]


class Campaign:
    """One instance: gold from batch g (img0), batch b1 (img1) with 3 replicas, workers careful / middling /
    careless, and gold mixed in; batch b2 (img2) with 3 replicas done by three middling workers."""

    def __init__(self, folder):
        self.folder = folder
        self.truths = {}
        for i in range(3):
            X, y = make_tissue((2 * SIZE, 2 * SIZE), seed=70 + i)
            self.truths[f"img{i}"] = y
            tifffile.imwrite(folder / f"img{i}.ome.tif", np.moveaxis(X, -1, 0), ome=True,
                             metadata={"axes": "CYX", "Channel": {"Name": ["DAPI", "CD45"]}})

    def cli(self, *argv):
        assert main(list(argv)) == 0, argv

    def run(self):
        cli = self.cli
        cli("db", "upgrade")
        cli("ingest", *(str(self.folder / f"img{i}.ome.tif") for i in range(3)), "--project", "syn",
            "--pixel-size", "0.5")
        cli("users", "create", "rev", "--role", "reviewer", "--password", PASSWORD)
        for name, image in (("g", "img0"), ("b1", "img1"), ("b2", "img2")):
            cli("batch", "create", name, "--project", "syn", "--images", image, "--size", str(SIZE), "--overlap", "0")
            cli("prelabel", "--batch", name, "--model", "baseline")
        self.config = Config.from_env()
        self.session = make_sessionmaker(make_engine(self.config.database_url))()
        self.storage = storage_from_url(self.config.storage_url)
        cli("publish", "--batch", "g", "--out", str(self.folder / "g.csv"), "--base-url", "https://crowd.example")
        with serving(create_app(self.config)) as url:
            self.url = url
            for i, row in enumerate(_rows(self.folder / "g.csv")):
                simulate.annotate(url, _token(row), _truth_of(self.truths, row), seed=i)
            assert simulate.Reviewer(url, "rev", PASSWORD).approve_all() == 4
            cli("gold", "add", "--batch", "g")
            # 12 replica links: a gold rate of 0.25 mixes in 4 gold tasks (a quarter of the 16 links)
            cli("publish", "--batch", "b1", "--replicas", "3", "--gold-rate", "0.25",
                "--out", str(self.folder / "b1.csv"))
            cli("publish", "--batch", "b2", "--replicas", "3", "--out", str(self.folder / "b2.csv"))
            self.b1 = _rows(self.folder / "b1.csv")
            self.b2 = _rows(self.folder / "b2.csv")
            self.checks_before_work(url)
            self.work(url)
            cli("consensus", "--batch", "b1", "--threshold", "0.0")
            cli("consensus", "--batch", "b2", "--threshold", "0.0")
            cli("crowd-report", "--batch", "b1", "--csv", "--out", str(self.folder / "report.csv"))
            from backend import loop
            from backend.loop import crowd

            b1 = loop.get_batch(self.session, None, "b1")
            self.workers = {w["worker"]: w for w in crowd.worker_scores(self.session, self.storage, batch=b1)}
        return self

    def gold_ids(self):
        return {t.id for t in self.session.scalars(select(Task).where(Task.crowd_role == "gold"))}

    def checks_before_work(self, url):
        """Replica isolation, the one-worker rule and the gold tasks' disguise, before anyone has worked."""
        gold = self.gold_ids()
        self.gold_rows = [r for r in self.b1 if int(r["task_id"]) in gold]
        plain = [r for r in self.b1 if int(r["task_id"]) not in gold]
        self.disguise = {"gold": [self.worker_view(url, r) for r in self.gold_rows[:1]],
                         "plain": [self.worker_view(url, r) for r in plain[:1]]}

    def worker_view(self, url, row):
        """Everything a worker's browser receives for a task before working on it, minus what differs per task."""
        import urllib.request

        with urllib.request.urlopen(f"{url}/task/{_token(row)}?worker=peek") as resp:
            page = resp.read()
            headers = {k: v for k, v in resp.headers.items() if k not in ("Date", "Content-Length", "ETag",
                                                                         "Last-Modified")}
        client = TaskClient(url, _token(row))
        info = client.http.json("GET", client.path)
        return {"page": page, "headers": headers, "info": info, "row_keys": sorted(row)}

    def work(self, url):
        gold = self.gold_ids()
        by_crop = {}
        for row in self.b1:
            if int(row["task_id"]) not in gold:
                by_crop.setdefault((row["y0"], row["x0"]), []).append(row)
        names = list(SKILLS)
        self.assigned = {}  # task id -> worker
        for crop, replicas in sorted(by_crop.items()):
            for name, row in zip(names, replicas):
                simulate.annotate_with_skill(url, _token(row), _truth_of(self.truths, row), SKILLS[name],
                                             seed=int(row["task_id"]), worker=name)
                self.assigned[int(row["task_id"])] = name
        for i, row in enumerate(self.gold_rows):
            name = names[i % 3]
            simulate.annotate_with_skill(url, _token(row), _truth_of(self.truths, row), SKILLS[name],
                                         seed=int(row["task_id"]), worker=name)
            self.assigned[int(row["task_id"])] = name
        by_crop = {}
        for row in self.b2:
            by_crop.setdefault((row["y0"], row["x0"]), []).append(row)
        for crop, replicas in sorted(by_crop.items()):
            for k, row in enumerate(replicas):
                simulate.annotate_with_skill(url, _token(row), _truth_of(self.truths, row), simulate.MIDDLING,
                                             seed=int(row["task_id"]), worker=f"mid{k}")


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    folder = tmp_path_factory.mktemp("crowd")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CELLLOOP_INSTANCE_DIR", str(folder / "instance"))
        mp.delenv("CELLLOOP_DATABASE_URL", raising=False)
        mp.delenv("CELLLOOP_STORAGE_URL", raising=False)
        mp.delenv("CELLLOOP_BASE_URL", raising=False)
        yield Campaign(folder).run()


def test_publish_makes_replicas_with_their_own_tokens_and_mixes_gold_in(campaign):
    s = campaign.session
    b1 = [t for t in s.scalars(select(Task).where(Task.crowd_role.in_(("replica", "gold"))))
          if t.batch.name == "b1"]
    replicas = [t for t in b1 if t.crowd_role == "replica"]
    assert len(replicas) == 12 and len({t.crop_group for t in replicas}) == 4
    assert len(campaign.gold_rows) == 4 and len(campaign.b1) == 16
    assert len({_token(r) for r in campaign.b1}) == 16
    # every replica has its own history: revision 0 of its own, and the edits of its own worker only
    for t in replicas:
        authors = {r.author_ref for r in t.revisions[1:]}
        assert authors == {f"worker:{campaign.assigned[t.id]}"}, (t.id, authors)
    # gold tasks are not listed last: the CSV order does not give them away
    positions = [i for i, r in enumerate(campaign.b1) if r in campaign.gold_rows]
    assert positions != list(range(12, 16))


def test_a_replica_token_reaches_only_its_own_replica_and_a_worker_id_grants_nothing(campaign):
    url_rows = [r for r in campaign.b1 if r not in campaign.gold_rows]
    a, b = [r for r in url_rows if (r["y0"], r["x0"]) == (url_rows[0]["y0"], url_rows[0]["x0"])][:2]
    with serving(create_app(campaign.config)) as url:
        ca, cb = TaskClient(url, _token(a)), TaskClient(url, _token(b))
        ia, ib = ca.http.json("GET", ca.path), cb.http.json("GET", cb.path)
        assert ia["id"] == int(a["task_id"]) and ib["id"] == int(b["task_id"]) and ia["id"] != ib["id"]
        # the replicas were corrected by different workers: their labels differ, each link shows its own
        la, lb = ca.labels(), cb.labels()
        svc = TaskService(campaign.session, campaign.storage)
        campaign.session.expire_all()
        assert np.array_equal(la, svc.labels(campaign.session.get(Task, ia["id"])))
        assert np.array_equal(lb, svc.labels(campaign.session.get(Task, ib["id"])))
        assert not np.array_equal(la, lb)
        # a worker id names no task: with a made-up token, or a token of another deployment, nothing is reached
        for path in (f"/api/task/x{_token(a)[1:]}?worker={campaign.assigned[ib['id']]}",
                     f"/api/task/{_token(a)}x/labels?worker={campaign.assigned[ia['id']]}"):
            with pytest.raises(APIError) as err:
                ca.http.request("GET", path)
            assert err.value.status == 404
        # and with a valid token it names the worker, never another task: replica a's token under b's worker id
        # still serves replica a only, and b's revision does not move when a is edited
        before_b = cb.http.json("GET", cb.path)["revision"]
        spy = TaskClient(url, _token(a), worker=campaign.assigned[ib["id"]])
        assert spy.http.json("GET", spy.path)["id"] == ia["id"]
        assert cb.http.json("GET", cb.path)["revision"] == before_b


@pytest.mark.parametrize("database", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_one_worker_never_gets_two_replicas_of_one_crop(tmp_path, request, database):
    """The link refuses a worker id that already holds another replica of the crop, and a repeated open of the
    same replica is fine (on PostgreSQL too: the rule is a correlated condition of the assign's UPDATE)."""
    world = make_world(tmp_path, database_url=request.getfixturevalue("pg_url") if database == "postgres" else None,
                       n_tasks=1)
    session = world.session()
    svc = TaskService(session, world.storage())
    from backend.tasks import crowd

    original = session.get(Task, world.task_ids[0])
    replicas = crowd.add_replicas(svc, original, 3)
    session.commit()
    assert len(replicas) == 3 and {t.crop_group for t in replicas} == {original.id}
    with world.app.app_context():
        from backend.web.auth import make_task_token

        tokens = [make_task_token(t) for t in replicas]
    c = world.client
    assert c.post(f"/api/task/{tokens[0]}/open?worker=w1").status_code == 200
    assert c.post(f"/api/task/{tokens[0]}/open?worker=w1").status_code == 200  # the same replica again
    refused = c.post(f"/api/task/{tokens[1]}/open?worker=w1")
    assert refused.status_code == 409 and "another copy of this crop" in refused.get_json()["error"]
    # an edit or a submit would assign too: refused the same way, and nothing is stored
    edit = c.post(f"/api/task/{tokens[1]}/edit?worker=w1",
                  json={"base_revision": 0, "tool": "delete", "params": {"label": 1, "layer": 0}})
    assert edit.status_code == 409
    session.expire_all()
    second = session.get(Task, replicas[1].id)
    assert second.revision == 0 and second.assignee_ref is None and second.state is TaskState.prelabeled
    assert c.post(f"/api/task/{tokens[1]}/open?worker=w2").status_code == 200
    assert c.post(f"/api/task/{tokens[2]}/open").status_code == 200  # a link without a worker id: no rule to keep
    session.expire_all()
    assert session.get(Task, replicas[1].id).assignee_ref == "worker:w2"


def test_gold_tasks_look_like_any_other_task_to_a_worker(campaign):
    gold, plain = campaign.disguise["gold"][0], campaign.disguise["plain"][0]
    assert gold["page"] == plain["page"] and gold["headers"] == plain["headers"]
    assert gold["row_keys"] == plain["row_keys"] and all(r["image"] for r in campaign.b1)
    # publishing again without the crowd options still lists the links the crowd way: same links, no new tasks
    assert main(["publish", "--batch", "b1", "--out", str(campaign.folder / "again.csv")]) == 0
    again = _rows(campaign.folder / "again.csv")
    assert {r["task_id"] for r in again} == {r["task_id"] for r in campaign.b1}
    per_task = ("id", "box", "assist")
    assert {k: v for k, v in gold["info"].items() if k not in per_task} == \
        {k: v for k, v in plain["info"].items() if k not in per_task}
    assert set(gold["info"]) == set(plain["info"]) and gold["info"]["kind"] == "crop"
    assert "gold" not in json.dumps(gold["info"]).lower()
    # the links have one shape: a signed payload of a task id and nonce, nothing else
    for row in (campaign.gold_rows[0], [r for r in campaign.b1 if r not in campaign.gold_rows][0]):
        payload = _token(row).split(".")[0]
        raw = base64.urlsafe_b64decode(payload.lstrip(".") + "=" * (-len(payload) % 4))
        try:
            raw = zlib.decompress(raw)
        except zlib.error:
            pass
        assert set(json.loads(raw)) == {"t", "n"}
    # what a worker gets back after submitting a gold task says nothing of it either
    s = campaign.session
    gold_task = s.get(Task, int(campaign.gold_rows[0]["task_id"]))
    assert gold_task.state is TaskState.submitted and gold_task.kind == "crop"


def test_gold_scores_rank_workers_and_equal_f1_from_the_stored_labels(campaign):
    s = campaign.session
    s.expire_all()
    svc = TaskService(s, campaign.storage)
    scores = list(s.scalars(select(GoldScore)))
    assert len(scores) == 4
    by_worker = {}
    for g in scores:
        task = s.get(Task, g.task_id)
        truth_task = s.get(Task, s.get(GoldTruth, task.gold_id).source_task_id)
        # independently: the expert's approved labels of the source crop against the task's stored labels
        truth, labels = svc.labels(truth_task), svc.labels(task)
        for layer in (0, 1):
            assert g.f1_layers[layer] == pytest.approx(metrics.object_accuracy(truth[..., layer],
                                                                               labels[..., layer])["f1"])
        # the workers correct whole cells only: the score is the whole-cell layer's, the nuclear one is kept too
        assert g.detail["scored_layers"] == [0] and g.f1 == g.f1_layers[0]
        assert g.worker_ref == f"worker:{campaign.assigned[task.id]}"
        by_worker.setdefault(campaign.assigned[task.id], []).append(g.f1_layers[0])
    careful, careless = np.mean(by_worker["careful"]), np.mean(by_worker["careless"])
    assert careful >= 0.9 and careful - careless >= 0.3, by_worker
    assert campaign.workers["careful"]["gold_f1"] > campaign.workers["middling"]["gold_f1"] > \
        campaign.workers["careless"]["gold_f1"]
    assert campaign.workers["careful"]["gold_n"] == 2


def test_agreement_is_stored_per_crop_and_lower_for_the_careless_worker(campaign):
    s = campaign.session
    rows = [r for r in s.scalars(select(CropAgreement)) if r.batch_id == s.scalar(
        select(Task.batch_id).where(Task.id == int(campaign.b1[0]["task_id"])))]
    assert len(rows) == 4 and all(len(r.pairs) == 3 for r in rows)
    for r in rows:
        assert r.agreement == pytest.approx(np.mean([p[2] for p in r.pairs]))
    w = campaign.workers
    assert w["careful"]["agreement"] - w["careless"]["agreement"] >= 0.1, w
    assert w["careful"]["seconds_per_cell"] is not None and w["careless"]["edits_per_cell"] < \
        w["careful"]["edits_per_cell"]


def test_consensus_of_three_middling_workers_beats_the_median_worker(campaign):
    s = campaign.session
    svc = TaskService(s, campaign.storage)
    truth = campaign.truths["img2"][..., 0]
    consensus = [t for t in s.scalars(select(Task).where(Task.crowd_role == "consensus")) if t.batch.name == "b2"]
    assert len(consensus) == 4 and all(t.state is TaskState.approved for t in consensus)
    merged_true, merged_pred, per_worker = [], [], {}
    for t in consensus:
        box = (slice(t.y0, t.y1), slice(t.x0, t.x1))
        merged_true.append(truth[box])
        merged_pred.append(svc.labels(t)[..., 0])
        for k, r in enumerate(sorted(s.scalars(select(Task).where(Task.crop_group == t.crop_group,
                                                               Task.crowd_role == "replica")), key=lambda r: r.id)):
            worker = r.assignee_ref
            per_worker.setdefault(worker, ([], []))
            per_worker[worker][0].append(truth[box])
            per_worker[worker][1].append(svc.labels(r)[..., 0])
    merged = metrics.evaluate(merged_true, merged_pred)["pooled"]["f1"]
    singles = sorted(metrics.evaluate(a, b)["pooled"]["f1"] for a, b in per_worker.values())
    assert len(singles) == 3
    assert merged > singles[1], (merged, singles)


def test_merged_crops_flow_on_and_gold_work_never_does(campaign):
    s = campaign.session
    # a reviewer may even approve a gold task by hand: it still never reaches the stitched labels
    careless = [r for r in campaign.gold_rows if campaign.assigned[int(r["task_id"])] == "careless"][0]
    gold_task = s.get(Task, int(careless["task_id"]))
    with serving(create_app(campaign.config)) as url:
        reviewer = simulate.Reviewer(url, "rev", PASSWORD)
        queue = {t["id"] for t in reviewer.waiting()}
        assert not queue & campaign.gold_ids()  # gold is scored on submit, never queued for an expert
        replicas_b1 = {int(r["task_id"]) for r in campaign.b1} - campaign.gold_ids()
        assert not queue & replicas_b1  # merged by consensus: nothing of b1 waits for an expert
        reviewer.http.json("POST", f"/api/review/tasks/{gold_task.id}/approve", {})
    assert main(["stitch", "--batch", "b1"]) == 0
    assert main(["stitch", "--batch", "g"]) == 0  # the gold source batch: the gold task shows one of its crops
    s.expire_all()
    img0 = s.scalar(select(Image).where(Image.name == "img0"))
    img1 = s.scalar(select(Image).where(Image.name == "img1"))
    g_labels, _ = stitched_labels(campaign.storage, img0)
    svc = TaskService(s, campaign.storage)
    gold_task = s.get(Task, gold_task.id)
    source = s.get(Task, s.get(GoldTruth, gold_task.gold_id).source_task_id)
    window = g_labels[source.y0:source.y1, source.x0:source.x1, 0]
    # img0's stitched labels are still the expert-approved crop, not the worker's answer to the gold question
    assert metrics.object_accuracy(svc.labels(source)[..., 0], window)["f1"] == 1.0
    assert metrics.object_accuracy(svc.labels(gold_task)[..., 0], window)["f1"] < 1.0
    labels, coverage = stitched_labels(campaign.storage, img1)
    assert coverage.all()
    merged = {t.id: t for t in s.scalars(select(Task).where(Task.crowd_role == "consensus")) if t.image_id == img1.id}
    for t in merged.values():
        crop = labels[t.y0:t.y1, t.x0:t.x1, 0]
        assert metrics.object_accuracy(svc.labels(t)[..., 0], crop)["f1"] >= 0.9


def test_crowd_report_has_one_row_per_task_and_worker(campaign):
    rows = _rows(campaign.folder / "report.csv")
    assert list(rows[0]) == ["task_id", "crop", "batch", "worker", "gold", "state", "time_open_s", "cells", "edits",
                             "gold_f1", "agreement", "verdict"]
    assert len(rows) == 16 and len({(r["task_id"], r["worker"]) for r in rows}) == 16
    for r in rows:
        assert r["worker"] == campaign.assigned[int(r["task_id"])]
        if r["gold"] == "True":
            assert r["gold_f1"] != "" and r["agreement"] == ""
        else:
            assert r["gold_f1"] == "" and r["agreement"] != "" and r["verdict"] == "merged"
        assert int(r["cells"]) > 0 and float(r["time_open_s"]) >= 0
    s = campaign.session
    for r in rows:
        edits = [rev for rev in s.get(Task, int(r["task_id"])).revisions if rev.action == "edit"]
        assert int(r["edits"]) == len(edits)


def test_a_low_agreement_crop_goes_to_the_experts_first_and_the_queue_orders_by_risk(campaign):
    s = campaign.session
    group = sorted({t.crop_group for t in s.scalars(select(Task).where(Task.crowd_role == "replica"))
                    if t.batch.name == "b2"})[0]
    row = s.scalar(select(CropAgreement).where(CropAgreement.crop_group == group))
    consensus_task = s.get(Task, row.consensus_task_id)
    # undo this crop's merge to run it again with a threshold it does not reach
    s.delete(row)
    consensus_task.crowd_role = "retired"
    consensus_task.crop_group = None
    s.commit()
    assert main(["consensus", "--batch", "b2", "--threshold", "0.999"]) == 0
    s.expire_all()
    row = s.scalar(select(CropAgreement).where(CropAgreement.crop_group == group))
    assert row.outcome == "expert" and row.consensus_task_id is None
    with serving(create_app(campaign.config)) as url:
        reviewer = simulate.Reviewer(url, "rev", PASSWORD)
        queue = reviewer.http.json("GET", "/api/review/tasks?order=risk")["tasks"]
        first = queue[:3]
        assert {t["id"] for t in first} == {t.id for t in s.scalars(select(Task).where(Task.crop_group == group,
                                                                                    Task.crowd_role == "replica"))}
        assert all("replicas disagree" in t["why"] for t in first)
        risks = [t["risk"] for t in queue]
        assert risks == sorted(risks, reverse=True)
        with pytest.raises(APIError) as err:
            reviewer.http.json("GET", "/api/review/tasks?order=random")
        assert err.value.status == 400


def test_a_pinned_review_comment_comes_back_to_the_worker(world):
    task_id = world.task_ids[0]
    token = world.tokens[task_id]
    c = world.client
    assert c.post(f"/api/task/{token}/submit", json={"base_revision": 0}).status_code == 200
    csrf = login(c, "rev")
    h = {"X-CSRF-Token": csrf}
    bad = c.post(f"/api/review/tasks/{task_id}/reject", json={"comment": "x", "pin": {"point": [999, 0]}}, headers=h)
    assert bad.status_code == 400 and "inside the 64x96 crop" in bad.get_json()["error"]
    assert c.post(f"/api/review/tasks/{task_id}/reject", json={"comment": "x", "pin": "here"}, headers=h).status_code == 400
    ok = c.post(f"/api/review/tasks/{task_id}/reject",
                json={"comment": "this cell is two cells", "pin": {"cell": 2, "layer": 0}}, headers=h)
    assert ok.status_code == 200
    info = c.get(f"/api/task/{token}").get_json()
    assert info["state"] == "rejected"
    assert info["review"] == {"verdict": "rejected", "comment": "this cell is two cells", "pin": {"cell": 2, "layer": 0}}
    # the worker's page says where, and selects the cell the comment is pinned to
    from playwright.sync_api import sync_playwright

    with serving(world.app) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(f"{url}/task/{token}?worker=w1")
            page.wait_for_selector("body[data-ready=true]", timeout=30000)
            assert "(cell 2, selected): “this cell is two cells”" in page.inner_text("body")
            assert page.evaluate("window.cellloop.editor.display.selected") == 2
        finally:
            browser.close()


def test_the_html_report_renders_its_plots_in_chromium_and_its_numbers_match_the_json(campaign):
    from playwright.sync_api import sync_playwright

    from backend import loop

    s = campaign.session
    # the F1 per cycle comes from what `cellloop cycle` records on a batch (training is not this test's business)
    for name, before, after in (("g", 0.61, 0.7), ("b1", 0.7, 0.74)):
        batch = loop.get_batch(s, None, name)
        batch.cycle = {"current": "baseline", "current_f1": before, "candidate": f"syn-{name}", "candidate_f1": after}
    s.commit()
    out = campaign.folder / "report.html"
    assert main(["report", "--project", "syn", "--html", str(out)]) == 0
    data = json.loads(out.with_suffix(".json").read_text())
    assert [c["trained_f1"] for c in data["f1_per_cycle"]] == [0.7, 0.74]
    assert {w["worker"] for w in data["workers"]} >= {"careful", "middling", "careless"}
    assert data["agreement_histogram"]["n"] == 8 and sum(data["agreement_histogram"]["counts"]) == 8
    hours = sum(e["seconds"] for e in data["effort_per_batch"]) / 3600
    assert hours > 0 and data["cost"]["hours"] == pytest.approx(hours, abs=1e-4)
    for who, rate in (("crowd", 6), ("trained", 30), ("pathologist", 150)):
        assert data["cost"]["cost"][who] == pytest.approx(hours * rate, abs=0.01)
    # one point per crop of the three batches that ended with labels (a crop left to the experts has none yet)
    waiting = len(list(s.scalars(select(CropAgreement).where(CropAgreement.outcome == "expert"))))
    assert len(data["difficulty_vs_error"]) == 12 - waiting
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(out.as_uri())
            figures = page.eval_on_selector_all(
                "img[data-figure]", "els => els.map(e => [e.dataset.figure, e.complete && e.naturalWidth > 100])")
            assert dict(figures) == {name: True for name in ("f1_per_cycle", "effort_per_batch", "cells_annotated",
                                                             "workers", "agreement_histogram",
                                                             "difficulty_vs_error", "cost")}
            embedded = json.loads(page.eval_on_selector("#figures", "e => e.textContent"))
            assert embedded == data
            workers = page.eval_on_selector_all(
                "table[data-table=workers] tbody tr",
                "rows => rows.map(r => Object.fromEntries([...r.cells].map(c => [c.dataset.key, c.textContent])))")
            cost = page.eval_on_selector_all(
                "table[data-table=cost] tbody tr",
                "rows => rows.map(r => Object.fromEntries([...r.cells].map(c => [c.dataset.key, c.textContent])))")
        finally:
            browser.close()
    assert [w["worker"] for w in workers] == [w["worker"] for w in data["workers"]]
    for shown, w in zip(workers, data["workers"]):
        for key in ("gold_f1", "agreement", "seconds_per_cell"):
            assert shown[key] == ("-" if w[key] is None else f"{w[key]:.4g}")
    assert {r["who"]: float(r["cost"]) for r in cost} == pytest.approx(data["cost"]["cost"], rel=1e-3)


@pytest.mark.parametrize("database", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_two_racing_opens_of_one_crop_by_one_worker_give_them_one_replica(tmp_path, request, database):
    import threading

    from backend.tasks import Actor, TransitionError
    from backend.tasks import crowd

    world = make_world(tmp_path, database_url=request.getfixturevalue("pg_url") if database == "postgres" else None,
                       n_tasks=1)
    with world.session() as session:
        replicas = [t.id for t in crowd.add_replicas(TaskService(session, world.storage()),
                                                    session.get(Task, world.task_ids[0]), 2)]
        session.commit()
    for attempt in range(3):
        worker = Actor(ref=f"worker:racer{attempt}")
        barrier, outcomes = threading.Barrier(2), []

        def open_one(task_id):
            with world.session() as session:
                svc = TaskService(session, world.storage())
                task = session.get(Task, task_id)
                barrier.wait()
                try:
                    svc.open(task, worker)
                    outcomes.append("opened")
                except TransitionError as exc:
                    outcomes.append(type(exc).__name__)

        threads = [threading.Thread(target=open_one, args=(t,)) for t in replicas]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert sorted(outcomes) == ["WorkerHasReplica", "opened"], outcomes
        with world.session() as session:
            held = [session.get(Task, t).assignee_ref for t in replicas]
            assert held.count(worker.ref) == 1
            # free both replicas for the next attempt
            for t in replicas:
                task = session.get(Task, t)
                task.assignee_ref, task.state, task.opened_at = None, TaskState.prelabeled, None
            session.commit()


def test_bad_crowd_commands_get_one_clear_line_and_change_nothing(campaign, capsys):
    s = campaign.session
    before = len(list(s.scalars(select(Task.id))))
    capsys.readouterr()
    for argv, says in ((["publish", "--batch", "b1", "--replicas", "0"], "--replicas must be between 1 and 10"),
                       (["publish", "--batch", "b1", "--gold-rate", "1.5"], "--gold-rate"),
                       (["publish", "--batch", "b1", "--experts-for", "2"], "--experts-for"),
                       (["consensus", "--batch", "g"], "has no replicas"),
                       (["consensus", "--batch", "b1", "--threshold", "3"], "--threshold"),
                       (["crowd-report", "--batch", "nope", "--csv"], "no batch named 'nope'"),
                       (["workers"], "name a --batch or a --project")):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and says in err, (argv, err)
    s.expire_all()
    assert len(list(s.scalars(select(Task.id)))) == before
