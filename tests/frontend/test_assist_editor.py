"""The assist tools in the browser (A: click, Shift+A: box with a sensitivity slider), on crops of the Vectra sample
whose maps are the training targets of its true cells and whose labels miss some of them: the editor stores
exactly what the server's tool computes, the slider changes the preview before anything is stored, undo restores;
a task without maps has the tools switched off and says why."""
from __future__ import annotations

import numpy as np
import pytest
import tifffile
from sqlalchemy import select

from backend.edits import apply_edit
from backend.tasks.maps import NOISE_FLOOR
from pipeline.model.maps import maps_from_labels

from .test_editor import click, drag, message, open_task, settle, shown_labels

BOXES = {"assist": (0, 0, 160, 160), "assistbox": (128, 128, 288, 288), "nomaps": (256, 0, 320, 64),
         "strokes": (256, 256, 384, 384)}


@pytest.fixture(scope="module")
def assist(server, shared_data):
    """Tasks of the browser server's project: two with maps (three true cells missing from their labels), one
    without; returns {name: (truth, labels, maps, missing ids)}."""
    from backend.config import Config
    from backend.store.models import Batch, Project
    from backend.tasks import TaskService
    from backend.tasks.maps import keep_crop_maps
    from backend.web.app import create_app
    from backend.web.auth import make_task_token

    config = Config.from_env(instance_dir=server.instance, secret_key=server.env["CELLLOOP_SECRET_KEY"],
                             database_url=server.env["CELLLOOP_DATABASE_URL"],
                             storage_url=server.env["CELLLOOP_STORAGE_URL"])
    app = create_app(config)
    session = app.extensions["cellloop.sessionmaker"]()
    storage = app.extensions["cellloop.storage"]
    cells = tifffile.imread(shared_data / "vectra" / "image0_wholecell.tif").astype(np.int32)
    project = session.scalar(select(Project).where(Project.name == "vectra"))
    batch = Batch(project=project, name="assist")
    session.add(batch)
    svc = TaskService(session, storage)
    made = {}
    for name, (y0, x0, y1, x1) in BOXES.items():
        truth = np.zeros((y1 - y0, x1 - x0, 2), np.int32)
        truth[..., 0] = cells[y0:y1, x0:x1]
        ids, counts = np.unique(truth[..., 0][truth[..., 0] > 0], return_counts=True)
        missing = [int(i) for i in ids[np.argsort(-counts)][2:5]] if name != "strokes" else []
        labels = truth.copy()
        labels[..., 0][np.isin(labels[..., 0], missing)] = 0
        task = svc.create_task(batch, (y0, x0, y1, x1), server.image[y0:y1, x0:x1], labels)
        session.commit()
        maps = None
        if name not in ("nomaps", "strokes"):
            maps = maps_from_labels(truth)
            maps = np.where(maps < NOISE_FLOOR, 0, maps).astype(np.uint8)  # as stored
            whole = np.zeros(cells.shape + (4,), np.uint8)  # prelabel hands over the whole image's maps
            whole[y0:y1, x0:x1] = maps
            keep_crop_maps(session, storage, task, whole, "vectra-v1")
        with app.app_context():
            server.tasks[name] = (task.id, make_task_token(task))
        made[name] = (truth, labels, maps, missing)
    session.close()
    return made


def centre_of(truth, label):
    from scipy import ndimage

    depth = ndimage.distance_transform_edt(truth[..., 0] == label)
    return [int(v) for v in np.unravel_index(np.argmax(depth), depth.shape)]


def test_assist_click_on_a_missed_cell_stores_the_servers_cell(server, context, assist):
    truth, labels, maps, missing = assist["assist"]
    page = open_task(context, server, "assist")
    assert "vectra-v1" in page.locator(".assist-info").text_content()
    page.keyboard.press("a")
    assert page.evaluate("() => window.cellloop.editor.tool") == "assist_click"
    point = centre_of(truth, missing[0])
    click(page, *point)
    settle(page)
    after = server.labels("assist")
    expected = apply_edit(labels, None, "assist_click", {"layer": 0, "point": point, "overwrite": False},
                          maps=maps).apply(labels.copy())
    np.testing.assert_array_equal(after, expected)
    new = after[point[0], point[1], 0]
    assert new == labels.max() + 1
    drawn, true = after[..., 0] == new, truth[..., 0] == missing[0]
    assert (drawn & true).sum() / (drawn | true).sum() > 0.7  # the cell the model sees, close to the truth
    np.testing.assert_array_equal(shown_labels(page), after)
    # a second click inside that cell redraws it from the maps: the same cell again, nothing changes
    click(page, *point)
    settle(page)
    np.testing.assert_array_equal(server.labels("assist"), after)
    assert "nothing changed" in message(page)
    assert page.errors == []


def test_assist_box_slider_changes_the_preview_apply_stores_it_undo_restores(server, context, assist):
    truth, labels, maps, missing = assist["assistbox"]
    page = open_task(context, server, "assistbox")
    page.keyboard.press("Shift+A")
    assert page.evaluate("() => window.cellloop.editor.tool") == "assist_box"
    ys, xs = np.nonzero(np.isin(truth[..., 0], missing[:2]))
    corners = [(int(ys.min()) - 3, int(xs.min()) - 3), (int(ys.max()) + 4, int(xs.max()) + 4)]
    corners = [(max(r, 0), max(c, 0)) for r, c in corners]
    drag(page, corners, steps=4)
    ready = "(s) => { const b = window.cellloop.editor.boxPreview; return b && b.patch && !b.loading && b.shown === s; }"
    page.wait_for_function(ready, arg=0.5)
    box = page.evaluate("() => window.cellloop.editor.boxPreview.box")
    first = shown_labels(page)
    assert (first != labels).any()
    np.testing.assert_array_equal(server.labels("assistbox"), labels)  # a preview stores nothing
    assert server.info("assistbox")["revision"] == 0
    expected_first = apply_edit(labels, None, "assist_box", {"layer": 0, "box": box, "sensitivity": 0.5,
                                                             "overwrite": False}, maps=maps).apply(labels.copy())
    np.testing.assert_array_equal(first, expected_first)

    page.evaluate("""() => { const s = window.cellloop.editor.sensitivity; s.value = '0.9';
                             s.dispatchEvent(new Event('input')); }""")
    page.wait_for_function(ready, arg=0.9)
    second = shown_labels(page)
    assert (second != first).any()
    assert server.info("assistbox")["revision"] == 0
    page.keyboard.press("Enter")
    settle(page)
    after = server.labels("assistbox")
    expected = apply_edit(labels, None, "assist_box", {"layer": 0, "box": box, "sensitivity": 0.9, "overwrite": False},
                          maps=maps).apply(labels.copy())
    np.testing.assert_array_equal(after, expected)
    np.testing.assert_array_equal(shown_labels(page), after)
    assert page.locator(".box-panel").is_hidden()
    # one undo step restores the labels
    page.keyboard.press("Control+z")
    settle(page)
    np.testing.assert_array_equal(server.labels("assistbox"), labels)
    np.testing.assert_array_equal(shown_labels(page), labels)
    # Esc cancels a preview: nothing stored, nothing shown
    page.keyboard.press("Shift+A")
    drag(page, corners, steps=4)
    page.wait_for_function(ready, arg=0.9)
    page.keyboard.press("Escape")
    np.testing.assert_array_equal(shown_labels(page), labels)
    assert server.info("assistbox")["revision"] == 2
    assert page.errors == []


def test_a_task_without_maps_has_the_assist_tools_off_and_says_why(server, context, assist):
    page = open_task(context, server, "nomaps")
    button = page.locator("button.tool[data-tool=assist_click]")
    assert button.is_disabled() and "no model maps" in button.get_attribute("title")
    assert page.locator(".assist-info").text_content() == "assist off"
    page.keyboard.press("a")
    assert page.evaluate("() => window.cellloop.editor.tool") != "assist_click"
    assert "off" in message(page) and "no model maps" in message(page)
    help_text = page.locator(".help").text_content()
    assert "assist" in help_text and "Shift+A" in help_text


def test_eraser_takes_only_the_selected_cell_and_a_long_stroke_is_one_undo_step(server, context, assist):
    truth, labels, _, _ = assist["strokes"]
    from scipy import ndimage

    page = open_task(context, server, "strokes")
    # two touching cells: select one, erase across both
    ids = [int(i) for i in np.unique(labels[..., 0]) if i]
    grown = {i: ndimage.binary_dilation(labels[..., 0] == i) for i in ids}
    a, b = next((i, j) for i in ids for j in ids if i < j and (grown[i] & (labels[..., 0] == j)).sum() > 3)
    ya, xa = centre_of(labels, a)
    yb, xb = centre_of(labels, b)
    page.keyboard.press("v")
    click(page, ya, xa)
    assert page.evaluate("() => window.cellloop.editor.display.selected") == a
    page.keyboard.press("e")
    drag(page, [(ya, xa), (yb, xb)])
    settle(page)
    after = server.labels("strokes")
    changed = after[..., 0] != labels[..., 0]
    assert changed.any() and set(np.unique(labels[..., 0][changed]).tolist()) == {a}
    assert (after[..., 0] == b).sum() == (labels[..., 0] == b).sum()
    np.testing.assert_array_equal(shown_labels(page), after)
    # with nothing selected the eraser takes every cell under it
    page.keyboard.press("Escape")
    page.keyboard.press("e")
    drag(page, [(ya, xa), (yb, xb)])
    settle(page)
    assert (server.labels("strokes")[..., 0] == b).sum() < (labels[..., 0] == b).sum()
    erased = server.labels("strokes")

    # a stroke of 4,500 points goes as three requests and comes back with one undo
    page.keyboard.press("n")
    trace = [[10 + (i % 2) * 20, 5 + i // 40] for i in range(4500)]
    page.evaluate("""(trace) => {
        const e = window.cellloop.editor;
        e.drag = { kind: 'stroke', tool: 'paint', points: trace, box: null };
        e.previewStroke(e.drag, trace);
        e.finishStroke(e.drag);
        e.drag = null;
    }""", trace)
    settle(page)
    revision = server.info("strokes")["revision"]
    assert (server.labels("strokes") != erased).any() and revision == 5
    page.keyboard.press("Control+z")
    settle(page)
    np.testing.assert_array_equal(server.labels("strokes"), erased)
    np.testing.assert_array_equal(shown_labels(page), erased)
    page.keyboard.press("Control+z")  # the next undo is the eraser stroke before it
    settle(page)
    np.testing.assert_array_equal(server.labels("strokes"), after)
    assert page.errors == []


SELECT_AND_PROBE = """([id, r, c]) => {
    const e = window.cellloop.editor;
    e.view.scale = 4; e.view.centerOn(r + 0.5, c + 0.5);
    e.selectCell(id, false); e.drawNow();
    const [x, y] = e.view.toCanvas(r + 0.5, c + 0.5).map(Math.floor);
    const probe = document.createElement('canvas'); probe.width = 1; probe.height = 1;
    const ctx = probe.getContext('2d'); ctx.drawImage(e.canvas, x, y, 1, 1, 0, 0, 1, 1);
    return [Array.from(ctx.getImageData(0, 0, 1, 1).data), e.renderer.tilesDrawn];
}"""


def test_selecting_a_cell_highlights_it_without_redrawing_the_tile_cache(server, context, assist):
    _, labels, _, _ = assist["nomaps"]
    page = open_task(context, server, "nomaps")
    assert page.evaluate("() => window.cellloop.editor.renderer.name").startswith("WebGL2")
    ids = [int(i) for i in np.unique(labels[..., 0]) if i]
    a, b = sorted(ids, key=lambda i: -(labels[..., 0] == i).sum())[:2]
    r, c = centre_of(labels, a)
    plain, drawn = page.evaluate(SELECT_AND_PROBE, [0, r, c])
    lit, drawn_after = page.evaluate(SELECT_AND_PROBE, [a, r, c])
    assert lit != plain and drawn_after == drawn  # highlighted, and not one tile composited again
    other, drawn_other = page.evaluate(SELECT_AND_PROBE, [b, r, c])
    assert other == plain and drawn_other == drawn
    assert page.errors == []
