"""The expert's whole-image QC page in a real browser: the queue lists image QC apart from crop reviews, the QC
task opens the whole stitched image in the same editor, the conflicts panel zooms to a conflict, marks it resolved
(counts follow, the server keeps it), draws the crop seams; an edit and its undo; approve. Also the help overlay's
Close button at 800 px and "New cell" after a submit."""
from __future__ import annotations

import numpy as np
import tifffile
from sqlalchemy import select

from backend.loop.stitch import stitch_batch
from backend.store.models import Batch, ImageQC, Project, Task, TaskState, User
from backend.store.storage import storage_from_url
from backend.tasks import Actor, TaskService

BOXES = [(0, 0, 160, 160), (0, 128, 160, 288)]


def _split_cell_in_overlap(crop, cell, zone_col):
    """Cut the cell's pixels in the shared zone (columns from ``zone_col``) in two, a third and the rest, in this
    crop only: the other crop's cell is then the best match of both pieces, but only one piece is its."""
    mask = crop[..., 0] == cell
    mask[:, :zone_col] = False
    rows = np.nonzero(mask.any(1))[0]
    part = mask.copy()
    part[rows[0] + max(1, (rows[-1] - rows[0]) // 3):] = False
    crop[..., 0][part] = crop[..., 0].max() + 1
    return crop


def make_qc_task(server, shared_data) -> tuple[int, int]:
    """Two approved crops of the Vectra sample (one with a cell in the shared zone cut in two), stitched: the
    image's QC task and the number of conflicts stitch listed."""
    cells = tifffile.imread(shared_data / "vectra" / "image0_wholecell.tif").astype(np.int32)
    truth = np.zeros(cells.shape + (2,), np.int32)
    truth[..., 0] = cells
    session = server.session()
    storage = storage_from_url(server.env["CELLLOOP_STORAGE_URL"])
    project = session.scalar(select(Project).where(Project.name == "vectra"))
    image = project.images[0]
    batch = Batch(project=project, name="qc-crops")
    session.add(batch)
    svc = TaskService(session, storage)
    reviewer = Actor(user=session.scalar(select(User).where(User.username == "reviewer")))
    zone = truth[0:160, 128:160, 0]
    ids, counts = np.unique(zone[zone > 0], return_counts=True)
    for i, (y0, x0, y1, x1) in enumerate(BOXES):
        crop = truth[y0:y1, x0:x1].copy()
        if i == 0:
            crop = _split_cell_in_overlap(crop, ids[np.argmax(counts)], 128)
        task = svc.create_task(batch, (y0, x0, y1, x1), server.image[y0:y1, x0:x1], crop)
        task.image_id = image.id
        session.commit()
        svc.open(task, Actor(ref="w"))
        svc.submit(task, Actor(ref="w"), task.revision)
        svc.review(task, reviewer, "approve")
    stitch_batch(session, storage, batch)
    qc = session.scalar(select(ImageQC).where(ImageQC.image_id == image.id))
    out = qc.task_id, len(qc.conflicts)
    session.close()
    return out


def overlay_cyan(page, row, col):
    """Cyan overlay pixels (the seams' colour) around image pixel (row, col)."""
    return page.evaluate("""([r, c]) => {
        const e = window.cellloop.editor;
        const [x, y] = e.view.toCanvas(r, c).map(Math.round);
        const d = e.overlay.getContext('2d').getImageData(x - 3, y - 3, 7, 7).data;
        let n = 0;
        for (let i = 0; i < d.length; i += 4) if (d[i] < 80 && d[i + 1] > 200 && d[i + 2] > 200 && d[i + 3] > 0) n++;
        return n;
    }""", [row, col])


def test_qc_page_with_the_conflicts_panel(server, context, artifacts, shared_data):
    qc_id, n_conflicts = make_qc_task(server, shared_data)
    assert n_conflicts >= 1
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(server.url + "/")
    page.fill("input[name=username]", "reviewer")
    page.fill("input[name=password]", "correct horse battery")
    page.click("#login button")
    page.wait_for_selector("tr.task")
    page.select_option("#kind-filter", "qc")
    page.wait_for_selector(f"tr.task[data-id='{qc_id}'][data-kind=qc]")
    assert page.locator("tr.task[data-kind=crop]").count() == 0
    assert "1 image QC" in page.text_content("#kind-counts")
    page.click(f"tr.task[data-id='{qc_id}']")
    page.wait_for_selector("body[data-ready]", timeout=60_000)
    assert "image QC" in page.text_content("#title")
    shape = page.evaluate("() => [window.cellloop.editor.labels.height, window.cellloop.editor.labels.width]")
    assert shape == list(server.image.shape[:2])  # the whole image, not a crop
    assert page.locator("#qc-conflicts li.conflict").count() == n_conflicts
    assert page.get_attribute("#qc-counts", "data-open") == str(n_conflicts)

    # a click zooms to the conflict
    first = page.locator("#qc-conflicts li.conflict").first
    scale_before = page.evaluate("() => window.cellloop.editor.view.scale")
    first.click()
    conflict = page.evaluate("() => window.cellloop.qc.data.conflicts[0]")
    view = page.evaluate("() => { const v = window.cellloop.editor.view; return [v.scale, v.y + v.canvasHeight / v.scale / 2, v.x + v.canvasWidth / v.scale / 2]; }")
    assert view[0] > scale_before and abs(view[1] - conflict["y"]) < 2 and abs(view[2] - conflict["x"]) < 2

    # seams: drawn only when asked (the left edge of the second crop, column 128)
    seam = (conflict["y"] - 10, 128)
    assert overlay_cyan(page, *seam) == 0
    page.check("#qc-seams")
    assert overlay_cyan(page, *seam) > 0
    page.screenshot(path=str(artifacts / "qc-page.png"))

    # resolved: the counts follow, and the server keeps it
    first.locator("input").check()
    page.wait_for_function("(n) => document.querySelector('#qc-counts').dataset.open === String(n)", arg=n_conflicts - 1)
    assert "1 resolved" in page.text_content("#qc-counts")
    with server.session() as db:
        assert db.scalar(select(ImageQC).where(ImageQC.task_id == qc_id)).conflicts[0]["resolved"] is True

    # the editor's tools and undo work on the whole image
    rev0 = page.evaluate("() => window.cellloop.editor.labels.revision")
    page.keyboard.press("b")
    x, y = page.evaluate("""([r, c]) => { const e = window.cellloop.editor; const [x, y] = e.view.toCanvas(r, c);
        const rect = e.stage.getBoundingClientRect(); const k = rect.width / e.canvas.width;
        return [rect.left + x * k, rect.top + y * k]; }""", [conflict["y"] + 0.5, conflict["x"] + 0.5])
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + 30, y, steps=6)
    page.mouse.up()
    page.evaluate("() => window.cellloop.editor.idle()")
    assert page.evaluate("() => window.cellloop.editor.labels.revision") == rev0 + 1
    page.keyboard.press("Control+z")
    page.evaluate("() => window.cellloop.editor.idle()")
    assert page.evaluate("() => window.cellloop.editor.labels.revision") == rev0 + 2

    page.click("#approve")
    page.wait_for_selector("#banner[data-kind=done]")
    with server.session() as db:
        assert db.get(Task, qc_id).state == TaskState.approved
    assert not errors


def test_help_close_is_reachable_at_800_px_and_new_cell_is_disabled_after_submit(server, context):
    page = context.new_page()
    page.set_viewport_size({"width": 1280, "height": 800})
    page.goto(server.task_url("brush"))
    page.wait_for_selector("body[data-ready]", timeout=30_000)
    page.keyboard.press("?")
    close = page.locator(".help .help-close")
    close.wait_for()
    box = close.bounding_box()
    assert box is not None and 0 <= box["y"] and box["y"] + box["height"] <= 800
    close.click(no_wait_after=True, timeout=2_000)  # clickable where it is, no scrolling needed
    assert page.locator(".help").is_hidden()

    new_cell = page.locator(".toolbar button", has_text="New cell")
    assert new_cell.is_enabled()
    page.click("#submit")
    page.click("#confirm button[value=submit]")
    page.wait_for_function("() => document.querySelector('.toolbar button.tool').disabled")
    assert new_cell.is_disabled()
    label = page.evaluate("() => window.cellloop.editor.brushLabel")
    page.keyboard.press("n")  # the key does nothing either
    assert page.evaluate("() => window.cellloop.editor.brushLabel") == label
