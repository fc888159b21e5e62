"""The label editor in a real browser: every tool through its key, checked on the server; undo/redo and
reload; a conflict from a second tab; the crowd iframe; rendered pixels; the review round trip."""
from __future__ import annotations

import json

import numpy as np
from scipy import ndimage

from backend.edits import apply_edit
from backend.edits.brush import stroke_mask

# --- helpers -------------------------------------------------------------------------------------------------


def open_task(context, server, name, query=""):
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(server.task_url(name, query))
    page.wait_for_selector("body[data-ready]", timeout=30_000)
    page.errors = errors
    return page


TO_PAGE = """([r, c]) => {
    const e = window.cellloop.editor;
    const [x, y] = e.view.toCanvas(r, c);
    const rect = e.stage.getBoundingClientRect();
    const k = rect.width / e.canvas.width;
    return [rect.left + x * k, rect.top + y * k];
}"""


def screen(page, row, col, corner=False):
    """Page coordinates of image pixel (row, col): its centre, or its top-left corner."""
    off = 0 if corner else 0.5
    return page.evaluate(TO_PAGE, [row + off, col + off])


PIXEL_AT = """([scale, r, c]) => {
    // at this zoom, centred on image pixel (r, c): the colour of the screen pixel showing it, and the image
    // pixel that screen pixel really shows
    const e = window.cellloop.editor;
    e.view.scale = scale; e.view.centerOn(r + 0.5, c + 0.5); e.drawNow();
    const [x, y] = e.view.toCanvas(r + 0.5, c + 0.5).map(Math.floor);
    const shows = e.view.toImage(x + 0.5, y + 0.5).map(Math.floor);
    const probe = document.createElement('canvas'); probe.width = 1; probe.height = 1;
    const ctx = probe.getContext('2d'); ctx.drawImage(e.canvas, x, y, 1, 1, 0, 0, 1, 1);
    return [Array.from(ctx.getImageData(0, 0, 1, 1).data), shows];
}"""


def settle(page):
    """Every queued edit answered."""
    page.evaluate("() => window.cellloop.editor.idle()")


def drag(page, pixels, steps=8):
    x, y = screen(page, *pixels[0])
    page.mouse.move(x, y)
    page.mouse.down()
    for p in pixels[1:]:
        x, y = screen(page, *p)
        page.mouse.move(x, y, steps=steps)
    page.mouse.up()


def click(page, row, col):
    page.mouse.click(*screen(page, row, col))


def message(page):
    return page.locator(".statusbar .message").text_content()


def shown_labels(page):
    h, w = page.evaluate("() => [window.cellloop.editor.labels.height, window.cellloop.editor.labels.width]")
    flat = page.evaluate("() => Array.from(window.cellloop.editor.labels.shown)")
    return np.array(flat, np.int32).reshape(h, w, 2)


def biggest_cells(labels, n):
    ids, counts = np.unique(labels[..., 0][labels[..., 0] > 0], return_counts=True)
    return [int(i) for i in ids[np.argsort(-counts)][:n]]


def interior_pixel(labels, cell):
    """A pixel deep inside the cell (its distance-transform peak)."""
    dist = ndimage.distance_transform_edt(labels[..., 0] == cell)
    return tuple(int(v) for v in np.unravel_index(np.argmax(dist), dist.shape))


# --- tests ---------------------------------------------------------------------------------------------------


def test_brush_stroke_changes_exactly_the_trace(server, context):
    before = server.labels("brush")
    page = open_task(context, server, "brush")
    label = page.evaluate("() => window.cellloop.editor.brushLabel")
    assert label == before.max() + 1
    trace = [(40, 10), (40, 100), (90, 100)]  # right, then down: every mouse sample lies on the trace
    drag(page, trace)
    settle(page)
    after = server.labels("brush")
    covered = np.zeros(before.shape[:2], bool)
    box, mask = stroke_mask(np.array(trace), 2, before.shape[:2])
    covered[box[0]:box[2], box[1]:box[3]] = mask
    expected = before.copy()
    # exclude mode, the default: the brush paints background only
    expected[..., 0][covered & (before[..., 0] == 0)] = label
    np.testing.assert_array_equal(after, expected)
    assert (after != before).any()
    # what the browser shows is what the server stored
    np.testing.assert_array_equal(shown_labels(page), after)
    # the patch's frame drew only the screen over the patch, and that picture is the whole frame's
    presented, canvas, differ = page.evaluate(PARTIAL_FRAME)
    assert 0 < presented < canvas / 3 and differ == 0, (presented, canvas, differ)
    assert page.errors == []


PARTIAL_FRAME = """async () => {
    const e = window.cellloop.editor;
    await new Promise((resolve) => requestAnimationFrame(() => resolve()));  // the patch's frame
    const presented = e.renderer.presented;
    const read = () => {
        e.renderer.finish();
        const c = document.createElement('canvas'); c.width = e.canvas.width; c.height = e.canvas.height;
        const ctx = c.getContext('2d'); ctx.drawImage(e.canvas, 0, 0);
        return ctx.getImageData(0, 0, c.width, c.height).data;
    };
    const partial = read();
    e.renderer.frameKey = null;  // the whole canvas again
    e.drawNow();
    const whole = read();
    let differ = 0;
    for (let i = 0; i < whole.length; i++) if (whole[i] !== partial[i]) differ++;
    return [presented, e.canvas.width * e.canvas.height, differ];
}"""


def test_a_long_stroke_goes_in_requests_of_at_most_2000_points(server, context):
    page = open_task(context, server, "long")
    sent = []
    page.on("request", lambda r: sent.append(json.loads(r.post_data)) if r.url.endswith("/edit") else None)
    before = server.labels("long")
    label = page.evaluate("() => window.cellloop.editor.brushLabel")
    # a zigzag no simplification can shorten: 4,500 corners, 20 px apart
    trace = [[10 + (i % 2) * 20, 5 + i // 40] for i in range(4500)]
    page.evaluate("""(trace) => {
        const e = window.cellloop.editor;
        e.drag = { kind: 'stroke', tool: 'paint', points: trace, box: null };
        e.previewStroke(e.drag, trace);
        e.finishStroke(e.drag);
        e.drag = null;
    }""", trace)
    settle(page)
    points = [body["params"]["points"] for body in sent]
    assert len(points) == 3 and all(len(p) <= 2000 for p in points)
    assert all(a[-1] == b[0] for a, b in zip(points, points[1:]))  # the trace stays continuous
    covered = np.zeros(before.shape[:2], bool)
    for a, b in zip(trace, trace[1:]):
        box, mask = stroke_mask(np.array([a, b]), 2, before.shape[:2])
        covered[box[0]:box[2], box[1]:box[3]] |= mask
    expected = before.copy()
    expected[..., 0][covered & (before[..., 0] == 0)] = label
    np.testing.assert_array_equal(server.labels("long"), expected)
    assert server.info("long")["revision"] == 3
    # a trace longer than the server takes in one request is cut by length too: 1,000 corners 120 px apart
    lengths = page.evaluate("""async () => {
        const { chunks } = await import('/static/js/stroke.js');
        const trace = Array.from({ length: 1000 }, (_, i) => [(i % 2) * 120, i]);
        return chunks(trace).map((part) => part.slice(1).reduce(
            (sum, p, i) => sum + Math.hypot(p[0] - part[i][0], p[1] - part[i][1]), 0));
    }""")
    assert len(lengths) == 3 and max(lengths) <= 50_000 and sum(lengths) > 119_000


def test_tools_through_their_keys(server, context):
    page = open_task(context, server, "tools")
    image = server.image[0:160, 128:288]

    def step(keys, action):
        before = server.labels("tools")
        for key in keys:
            page.keyboard.press(key)
        action(before)
        settle(page)
        return before, server.labels("tools")

    # E: erase across a cell
    cell = biggest_cells(server.labels("tools"), 1)[0]
    r, c = interior_pixel(server.labels("tools"), cell)
    before, after = step(["e"], lambda b: drag(page, [(r, c - 3), (r, c + 3)]))
    box, mask = stroke_mask(np.array([(r, c - 3), (r, c + 3)]), 2, before.shape[:2])
    erased = np.zeros(before.shape[:2], bool)
    erased[box[0]:box[2], box[1]:box[3]] = mask
    expected = before.copy()
    expected[..., 0][erased] = 0
    np.testing.assert_array_equal(after, expected)

    # G: flood the hole the eraser left with the brush label: exactly that connected region changes
    page.keyboard.press("n")
    label = page.evaluate("() => window.cellloop.editor.brushLabel")
    before, after = step(["g"], lambda b: click(page, r, c))
    region, _ = ndimage.label(before[..., 0] == before[r, c, 0])
    expected = before.copy()
    expected[..., 0][region == region[r, c]] = label
    np.testing.assert_array_equal(after, expected)

    # T: threshold a box: the engine's answer for that box on the active channel (0, nuclear)
    box = [100, 100, 150, 150]
    def drag_box(_):
        page.mouse.move(*screen(page, box[0], box[1], corner=True))
        page.mouse.down()
        page.mouse.move(*screen(page, box[2], box[3], corner=True), steps=5)
        page.mouse.up()

    before, after = step(["t"], drag_box)
    expected = before.copy()
    apply_edit(before, image, "threshold", {"box": box, "channel": 0}).apply(expected)
    np.testing.assert_array_equal(after, expected)

    # W: watershed split with two seed clicks inside one cell
    big = biggest_cells(after, 3)
    target = big[0]
    ys, xs = np.nonzero(after[..., 0] == target)
    far = np.argsort(xs)[[len(xs) // 8, -len(xs) // 8]]
    seeds = [(int(ys[i]), int(xs[i])) for i in far]
    before, after = step(["w"], lambda b: [click(page, *s) for s in seeds])
    parts = {int(after[s[0], s[1], 0]) for s in seeds}
    assert len(parts) == 2 and target in parts
    changed = before[..., 0] != after[..., 0]
    assert changed.any() and (before[..., 0][changed] == target).all()

    # R: replace: click the cell to keep, then the cell to merge into it
    a, b = [i for i in biggest_cells(after, 6) if i not in parts][:2]
    before, after = step(["r"], lambda _: [click(page, *interior_pixel(after, cell)) for cell in (a, b)])
    expected = before.copy()
    expected[..., 0][before[..., 0] == b] = a
    np.testing.assert_array_equal(after, expected)

    # S: swap two cells
    a, b = biggest_cells(after, 10)[8:10]
    before, after = step(["s"], lambda _: [click(page, *interior_pixel(after, cell)) for cell in (a, b)])
    expected = before.copy()
    expected[..., 0][before[..., 0] == a] = b
    expected[..., 0][before[..., 0] == b] = a
    np.testing.assert_array_equal(after, expected)

    # M: autofit a clicked cell to the active channel
    page.keyboard.press("Escape")  # deselect: the key picks the tool, the click applies it
    cell = biggest_cells(after, 4)[3]
    before, after = step(["m"], lambda _: click(page, *interior_pixel(after, cell)))
    expected = before.copy()
    apply_edit(before, image, "autofit", {"label": cell, "channel": 0}).apply(expected)
    np.testing.assert_array_equal(after, expected)
    assert (after != before).any() or "nothing changed" in message(page)

    # K: trim: a stray dab of a cell's label (V selects the cell, B paints with its id), then a click on the
    # cell's body keeps the body and drops the dab
    far = ndimage.distance_transform_edt(after[..., 0] == 0)
    dab = tuple(int(v) for v in np.unravel_index(np.argmax(far), far.shape))
    assert far[dab] > 4
    page.keyboard.press("v")
    click(page, *interior_pixel(after, cell))
    page.keyboard.press("b")
    click(page, *dab)
    settle(page)
    with_dab = server.labels("tools")
    assert with_dab[dab[0], dab[1], 0] == cell
    page.keyboard.press("Escape")
    body = interior_pixel(with_dab, cell)
    before, after = step(["k"], lambda _: click(page, *body))
    pieces, count = ndimage.label(with_dab[..., 0] == cell, np.ones((3, 3)))
    assert count == 2
    expected = with_dab.copy()
    expected[..., 0][(pieces > 0) & (pieces != pieces[body])] = 0
    np.testing.assert_array_equal(after, expected)
    assert after[dab[0], dab[1], 0] == 0

    # the id and area under the cursor
    cell = biggest_cells(after, 1)[0]
    page.mouse.move(*screen(page, *interior_pixel(after, cell)))
    assert f"cell {cell}, {int((after[..., 0] == cell).sum())} px" in page.locator(".cursor-info").text_content()

    # V selects a cell, Backspace deletes it
    victim = biggest_cells(after, 8)[-1]
    before, after = step(["v"], lambda _: (click(page, *interior_pixel(after, victim)),
                                           page.keyboard.press("Backspace")))
    expected = before.copy()
    expected[..., 0][before[..., 0] == victim] = 0
    np.testing.assert_array_equal(after, expected)
    assert page.errors == []


def test_grow_and_shrink_keys_with_caps_lock(server, context):
    page = open_task(context, server, "grow")
    labels = server.labels("grow")
    cell = biggest_cells(labels, 1)[0]
    page.keyboard.press("v")
    click(page, *interior_pixel(labels, cell))
    # Shift+Q grows the selected cell by one pixel
    page.keyboard.press("Shift+Q")
    settle(page)
    grown = server.labels("grow")
    expected = labels.copy()
    apply_edit(labels, None, "grow", {"label": cell, "n": 1}).apply(expected)
    np.testing.assert_array_equal(grown, expected)
    assert (grown[..., 0] == cell).sum() > (labels[..., 0] == cell).sum()
    # "Q" as Caps Lock sends it (no Shift) is still shrink, not grow
    page.keyboard.press("Q")
    settle(page)
    shrunk = server.labels("grow")
    expected = grown.copy()
    apply_edit(grown, None, "shrink", {"label": cell, "n": 1}).apply(expected)
    np.testing.assert_array_equal(shrunk, expected)
    # keys never fire while typing in a text field
    page.evaluate("""() => { const i = document.createElement('input'); i.id = 'typing'; document.body.append(i); }""")
    page.focus("#typing")
    page.keyboard.type("e q")
    assert page.evaluate("() => window.cellloop.editor.tool") == "select"
    assert server.info("grow")["revision"] == 2


def test_undo_redo_and_reload(server, context):
    page = open_task(context, server, "undo")
    original = server.labels("undo")
    page.keyboard.press("b")
    drag(page, [(20, 20), (20, 100)])
    settle(page)
    painted = server.labels("undo")
    assert (painted != original).any()
    page.keyboard.press("Control+z")
    settle(page)
    np.testing.assert_array_equal(server.labels("undo"), original)
    np.testing.assert_array_equal(shown_labels(page), original)
    page.keyboard.press("Control+Shift+Z")
    settle(page)
    np.testing.assert_array_equal(server.labels("undo"), painted)
    # every acknowledged edit is stored: a reload shows it, with no save button
    page.reload()
    page.wait_for_selector("body[data-ready]")
    np.testing.assert_array_equal(shown_labels(page), painted)
    assert server.info("undo")["revision"] == 3


def test_stale_edit_from_a_second_tab(server, context):
    first = open_task(context, server, "stale")
    second = open_task(context, server, "stale")
    first.keyboard.press("b")
    drag(first, [(10, 10), (10, 60)])
    settle(first)
    mine = server.labels("stale")
    second.keyboard.press("b")
    drag(second, [(100, 10), (100, 60)])
    settle(second)
    assert "changed elsewhere" in message(second)
    # the first tab's work is kept and the second tab now shows it; nothing was overwritten
    np.testing.assert_array_equal(server.labels("stale"), mine)
    np.testing.assert_array_equal(shown_labels(second), mine)
    # the refused stroke's preview is gone, and the next stroke goes through on the fresh revision
    drag(second, [(100, 10), (100, 60)])
    settle(second)
    final = server.labels("stale")
    assert (final[98:103, 10:61, 0] != mine[98:103, 10:61, 0]).any()
    np.testing.assert_array_equal(final[:50], mine[:50])


def test_a_refused_stroke_is_rolled_back_and_the_reason_shown(server, context):
    page = open_task(context, server, "refused")
    before = server.labels("refused")
    page.keyboard.press("b")
    drag(page, [(20, 10), (20, 60)])  # acknowledged
    settle(page)
    kept = server.labels("refused")
    # a label id past int32 is drawn at once in the browser, then refused by the server (400)
    page.evaluate("() => { window.cellloop.editor.brushLabel = 2 ** 31; }")
    drag(page, [(80, 10), (80, 60)])
    settle(page)
    assert "Not applied" in message(page) and "label" in message(page)
    np.testing.assert_array_equal(server.labels("refused"), kept)
    np.testing.assert_array_equal(shown_labels(page), kept)  # the preview is gone, the earlier stroke is not
    assert (kept != before).any()


def test_task_in_an_iframe_posts_submitted_to_its_parent(server, context):
    from backend.store.models import Revision

    src = server.task_url("frame", "?worker=W42")
    page = context.new_page()
    page.goto(f"{server.parent_url}/?src={src}")
    frame = page.frame_locator("#task")
    frame.locator("body[data-ready]").wait_for(timeout=30_000)
    assert context.cookies() == []
    task_frame = page.frames[1]
    x, y = task_frame.evaluate(TO_PAGE, [30.5, 30.5])
    box = page.locator("#task").bounding_box()
    page.mouse.click(box["x"] + x, box["y"] + y)  # the default tool is the brush: one dab
    task_frame.evaluate("() => window.cellloop.editor.idle()")
    frame.locator("#submit").click()
    frame.locator("dialog button[value=submit]").click()
    page.locator("#messages li").wait_for(timeout=10_000)
    received = json.loads(page.locator("#messages li").first.text_content())
    info = server.info("frame")
    assert received == {"origin": server.url, "data": {"type": "cellloop:submitted", "task": info["id"],
                                                        "revision": info["revision"]}}
    assert info["state"] == "submitted" and info["revision"] == 1
    # the worker id from the link is recorded with the edit
    with server.session() as db:
        rev = db.query(Revision).filter_by(task_id=info["id"], number=1).one()
        assert rev.author_ref == "worker:W42"
    # a page on an origin that is not allowed cannot frame the task
    foreign = context.new_page()
    foreign.goto(f"{server.foreign_url}/?src={src}")
    foreign.wait_for_timeout(1500)
    assert foreign.frame_locator("#task").locator("#editor").count() == 0


def test_channel_toggles_and_colours_change_the_rendered_pixels(server, context):
    page = open_task(context, server, "channels")
    for key in ["z", "z", "o", "o"]:  # fill 0.3 -> 0.6 -> 0, outlines 1 -> 0.5 -> 0: the image alone
        page.keyboard.press(key)

    def mean_rgb():
        page.evaluate("() => window.cellloop.editor.drawNow()")
        return np.array(page.evaluate("""() => {
            const e = window.cellloop.editor;
            const c = document.createElement('canvas');
            c.width = e.canvas.width; c.height = e.canvas.height;
            const ctx = c.getContext('2d');
            ctx.drawImage(e.canvas, 0, 0);
            const [x, y] = e.view.toCanvas(0, 0);
            const [x1, y1] = e.view.toCanvas(e.labels.height, e.labels.width);
            const d = ctx.getImageData(Math.ceil(x), Math.ceil(y), Math.floor(x1 - x) - 1, Math.floor(y1 - y) - 1).data;
            const s = [0, 0, 0];
            for (let i = 0; i < d.length; i += 4) { s[0] += d[i]; s[1] += d[i + 1]; s[2] += d[i + 2]; }
            return s.map((v) => v / (d.length / 4));
        }"""))

    both = mean_rgb()
    assert both[0] > 10 and both[1] > 10 and both[2] < 1  # membrane red, nuclear green
    # zoomed out below 1:1 the picture is composited straight to the screen, not through the cache: same colours
    page.keyboard.press("o")  # outlines back on, so labels count too
    labels = server.labels("channels")
    edge = np.argwhere((labels[..., 0] > 0) & (ndimage.grey_erosion(labels[..., 0], size=3) != labels[..., 0]))
    for r, c in [(64, 64), tuple(edge[len(edge) // 2])]:
        direct, (row, col) = page.evaluate(PIXEL_AT, [0.5, int(r), int(c)])
        cached, shows = page.evaluate(PIXEL_AT, [3, row, col])
        assert shows == [row, col] and direct == cached
    page.keyboard.press("o")
    page.keyboard.press("o")
    page.keyboard.press("0")
    page.locator(".channel[data-channel='1'] input[type=checkbox]").uncheck()
    nuclear_only = mean_rgb()
    assert nuclear_only[0] < 1 and abs(nuclear_only[1] - both[1]) < 1
    page.locator(".channel[data-channel='0'] input[type=color]").evaluate(
        "(el) => { el.value = '#0000ff'; el.dispatchEvent(new Event('input', { bubbles: true })); }")
    blue = mean_rgb()
    assert blue[1] < 1 and abs(blue[2] - nuclear_only[1]) < 1
    # Y: grayscale shows the active channel alone, in white
    page.keyboard.press("y")
    gray = mean_rgb()
    assert abs(gray[0] - gray[1]) < 1 and abs(gray[1] - gray[2]) < 1 and gray[0] > 10
    # the settings persist for the project: a reload comes back blue and gray
    page.reload()
    page.wait_for_selector("body[data-ready]")
    assert page.locator(".channel[data-channel='0'] input[type=color]").input_value() == "#0000ff"
    assert page.evaluate("() => window.cellloop.editor.channels.gray") is True


def test_16_bit_channels_keep_every_level(server, context):
    page = open_task(context, server, "sixteen")
    assert page.evaluate("() => window.cellloop.editor.planes[0].constructor.name") == "Uint16Array"
    for key in ["z", "z", "o", "o", "y"]:  # no fill, no outlines, grayscale of channel 0
        page.keyboard.press(key)
    values = np.clip(server.image[:64, :64, 0] * 3000, 0, 65535).astype(np.uint16)
    r, c = np.unravel_index(np.argmax(values), values.shape)
    peak = int(values[r, c])
    lo, hi = peak - 100, peak + 100  # a window 200 levels wide, far above 255
    page.evaluate("""([lo, hi]) => {
        const e = window.cellloop.editor;
        const ch = e.channels.channels[0];
        ch.min = lo; ch.max = hi; e.channels.changed();
    }""", [lo, hi])
    gray, _ = page.evaluate(PIXEL_AT, [4, int(r), int(c)])
    assert gray[0] == gray[1] == gray[2]
    assert abs(gray[0] - (peak - lo) / (hi - lo) * 255) <= 1


def test_reviewer_rejects_with_a_comment_then_approves(server, context, artifacts):
    server.api("review", "", None)
    server.api("review", "/submit", {"base_revision": 0})
    task_id = server.tasks["review"][0]
    reviewer = context.new_page()
    reviewer.goto(server.url + "/")
    reviewer.fill("input[name=username]", "reviewer")
    reviewer.fill("input[name=password]", "correct horse battery")
    reviewer.click("#login button")
    row = reviewer.locator(f"tr.task[data-id='{task_id}']")
    row.click()
    reviewer.wait_for_selector("body[data-ready]")
    reviewer.screenshot(path=str(artifacts / "editor-review.png"))
    reviewer.fill("#comment", "cell 12 is two nuclei, please split it")
    reviewer.click("#reject")
    reviewer.wait_for_selector("#banner[data-kind=done]")
    assert server.state("review") == "rejected"
    # the annotator reopens the link and sees why, then submits again
    annotator = open_task(context, server, "review")
    assert "cell 12 is two nuclei, please split it" in annotator.locator("#banner").text_content()
    annotator.click("#submit")
    annotator.click("dialog button[value=submit]")
    annotator.wait_for_selector("#banner[data-kind=done]")
    assert server.state("review") == "submitted"
    reviewer.goto(server.url + "/")  # still logged in: straight to the queue
    reviewer.locator(f"tr.task[data-id='{task_id}']").click()
    reviewer.wait_for_selector("body[data-ready]")
    # the reviewer corrects a little in the same editor before approving
    revision = server.info("review")["revision"]
    reviewer.keyboard.press("b")
    drag(reviewer, [(60, 20), (60, 50)])
    settle(reviewer)
    assert server.info("review")["revision"] == revision + 1
    reviewer.click("#approve")
    reviewer.wait_for_selector("#banner[data-kind=done]")
    assert server.state("review") == "approved"


def test_screenshot_of_the_vectra_task(server, context, artifacts):
    page = open_task(context, server, "screenshot")
    assert page.evaluate("() => window.cellloop.editor.channels.shown().length") == 2
    renderer = page.evaluate("() => window.cellloop.editor.renderer.name")
    assert renderer.startswith("WebGL2")
    page.screenshot(path=str(artifacts / "editor-task.png"))
    assert (artifacts / "editor-task.png").stat().st_size > 10_000


# --- a big task, opened in chunks ------------------------------------------------------------------------------

BIG = 1600  # 4x4 chunks of 512 px at full resolution, 2x2 at level 1, one at level 2


def _stored_big_task(server, name: str, image: np.ndarray, labels: np.ndarray, channel_names: list[str]) -> str:
    """The token of a one-task batch ``name`` holding ``image`` and ``labels`` whole, in a new project ``name``."""
    from backend.config import Config
    from backend.store.models import Batch
    from backend.store.projects import project_from_image
    from backend.tasks import TaskService
    from backend.web.app import create_app
    from backend.web.auth import make_task_token

    app = create_app(Config.from_env(instance_dir=server.instance, secret_key=server.env["CELLLOOP_SECRET_KEY"],
                                     database_url=server.env["CELLLOOP_DATABASE_URL"],
                                     storage_url=server.env["CELLLOOP_STORAGE_URL"]))
    session = app.extensions["cellloop.sessionmaker"]()
    storage = app.extensions["cellloop.storage"]
    project = project_from_image(session, storage, name=name, image=image, channel_names=channel_names)
    batch = Batch(project=project, name=name)
    session.add(batch)
    task = TaskService(session, storage).create_task(batch, (0, 0) + image.shape[:2], image, labels)
    session.commit()
    with app.app_context():
        token = make_task_token(task)
    session.close()
    return token


def _big_task(server) -> tuple[str, np.ndarray]:
    rows, cols = np.mgrid[0:BIG, 0:BIG]
    cells = ((rows // 40) * 40 + cols // 40 + 1).astype(np.int32)
    cells[(rows % 40 == 0) | (cols % 40 == 0)] = 0
    labels = np.stack([cells, np.zeros_like(cells)], axis=-1)
    rng = np.random.default_rng(7)
    image = np.stack([(cells > 0) * 20000 + rng.integers(0, 2000, cells.shape),
                      (cells == 0) * 40000 + rng.integers(0, 2000, cells.shape)], axis=-1).astype(np.uint16)
    return _stored_big_task(server, "big", image, labels, ["nuclear", "membrane"]), labels


CHUNK_REQUESTS = """() => performance.getEntriesByType('resource')
    .map((e) => [new URL(e.name).pathname.split('/').slice(-4), e.startTime])
    .filter(([p]) => p[0] === 'image' || p[0] === 'labels')
    .map(([p, t]) => [p[0], ...p.slice(1).map(Number), t])"""


def test_a_big_task_opens_with_the_view_first_and_paints(server, context):
    token, labels = _big_task(server)
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{server.url}/task/{token}")
    page.wait_for_selector("body[data-first-view]", timeout=30_000)
    first_view = page.evaluate("() => performance.getEntriesByName('cellloop-first-view')[0].startTime")
    opened = page.evaluate("() => window.cellloop.editor.timings.open")
    page.wait_for_selector("body[data-ready]", timeout=60_000)
    requests = page.evaluate(CHUNK_REQUESTS)
    # the first view: the level fitting the window (every 2nd pixel here), all of it in view, nothing more
    level = opened["level"]
    assert level == 1
    before = [r for r in requests if r[4] < first_view]
    assert sorted((k, lv, i, j) for k, lv, i, j, _ in before) == sorted(
        [("image", 1, i, j) for i in range(2) for j in range(2)] * 2  # each shown channel alone
        + [("labels", 1, i, j) for i in range(2) for j in range(2)])
    # then full resolution, the middle of the view first, every chunk once
    full = [(i, j) for k, lv, i, j, _ in sorted(requests, key=lambda r: r[4]) if k == "image" and lv == 0]
    assert sorted(full) == [(i, j) for i in range(4) for j in range(4)]
    assert full[0] == (1, 1) and set(full[1:3]) == {(1, 2), (2, 1)}  # the chunks nearest the view's centre (800, 800)
    shown = page.evaluate("() => Array.from(window.cellloop.editor.labels.confirmed.subarray(0, 2 * 1600 * 3))")
    assert np.array_equal(np.array(shown).reshape(3, BIG, 2), labels[:3])
    # 1600 cells listed, but only the rows scrolled into view are in the page; a jump to the last cell brings its
    # row in, selected, and a click on a row selects that cell
    page.wait_for_function("() => document.querySelector('.cells li[data-id]')")
    assert page.locator(".cell-box h3 span").text_content() == "(1600)"
    assert 0 < page.locator(".cells li[data-id]").count() < 100
    page.evaluate("() => window.cellloop.editor.selectCell(1600, true)")
    assert page.locator(".cells li.selected").get_attribute("data-id") == "1600"
    row = page.locator(".cells li[data-id]").first
    picked = int(row.get_attribute("data-id"))
    row.click()
    assert page.evaluate("() => window.cellloop.editor.display.selected") == picked != 1600
    page.keyboard.press("Escape")
    # a stroke across the corner of four chunks, zoomed in: stored on the server and drawn
    page.evaluate("() => { const e = window.cellloop.editor; e.overwrite = true; e.view.scale = 2; e.view.centerOn(512, 512); e.drawNow(); }")
    page.keyboard.press("b")
    trace = [(505, 505), (520, 518)]
    drag(page, trace)
    settle(page)
    from backend.store.arrays import decode_array
    import urllib.request
    with urllib.request.urlopen(f"{server.url}/api/task/{token}/labels", timeout=30) as resp:
        stored = decode_array(resp.read())
        assert resp.headers["X-Revision"] == "1"
    changed = np.argwhere(stored[..., 0] != labels[..., 0])
    assert changed.size and changed.min(axis=0).tolist()[0] < 512 < changed.max(axis=0).tolist()[0]
    here = page.evaluate("() => window.cellloop.editor.labels.at(0, 512, 512)")
    assert here == stored[512, 512, 0] != labels[512, 512, 0]
    # the stroke painted the picked cell (the brush took its id): its row shows the new area
    assert here == picked
    area = int((stored[..., 0] == picked).sum())
    assert area > int((labels[..., 0] == picked).sum())
    assert page.locator(f".cells li[data-id='{picked}'] span").text_content() == f"{area} px"
    assert errors == []


BIG8 = 1100  # 3x3 chunks at full resolution, 2x2 at level 1, one at level 2


def test_a_big_tasks_first_view_fetches_only_the_shown_channels(server, context):
    """An 8-channel big task whose saved display shows channels 3 and 6: the first view asks for those two only;
    the other six come next (their ranges from their values, a saved range kept), then full resolution with every
    channel, and a channel switched to later shows its exact 16-bit values; one switched on before the others are
    in is fetched alone at once."""
    rng = np.random.default_rng(11)
    # channel c: c * 5000 plus up to 2000, so each channel's auto range is its own
    image = (np.arange(8)[None, None, :] * 5000 + rng.integers(0, 2000, (BIG8, BIG8, 8))).astype(np.uint16)
    rows, cols = np.mgrid[0:BIG8, 0:BIG8]
    labels = np.stack([((rows // 50) * 50 + cols // 50 + 1).astype(np.int32), np.zeros((BIG8, BIG8), np.int32)], -1)
    names = [f"marker{c}" for c in range(8)]
    token = _stored_big_task(server, "big8", image, labels, names)

    saved = {"channels": {n: {"on": c in (3, 6)} for c, n in enumerate(names)}, "gray": False, "active": 3}
    saved["channels"]["marker6"].update(min=30100, max=30900)
    page = context.new_page()
    page.add_init_script(f"localStorage.setItem('cellloop.view.big8', {json.dumps(json.dumps(saved))})")
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    held = []  # whole chunks (the other channels come in them), held back until channel 1 is switched on

    def hold(route):
        if "channels=" not in route.request.url and not released:
            held.append(route)
        else:
            route.continue_()
    released = False
    page.route(lambda url: "/image/" in url, hold)
    page.goto(f"{server.url}/task/{token}")
    page.wait_for_selector("body[data-first-view]", timeout=30_000)
    first_view = page.evaluate("() => performance.getEntriesByName('cellloop-first-view')[0].startTime")
    level = page.evaluate("() => window.cellloop.editor.timings.open.level")
    # switched on while the others are on their way: fetched alone, at once
    page.evaluate("() => { const ch = window.cellloop.editor.channels; ch.channels[1].on = true; ch.changed(); }")
    page.wait_for_function("() => window.cellloop.editor.channels.channels[1].loaded", timeout=30_000)
    assert held and not page.evaluate("() => window.cellloop.editor.channels.channels[2].loaded")
    released = True
    for route in held:
        route.continue_()
    page.wait_for_selector("body[data-ready]", timeout=60_000)
    requests = page.evaluate("""() => performance.getEntriesByType('resource')
        .map((e) => [new URL(e.name), e.startTime]).filter(([u]) => /\\/image\\/\\d+\\/\\d+\\/\\d+$/.test(u.pathname))
        .map(([u, t]) => [u.pathname.split('/').slice(-3).map(Number), u.searchParams.get('channels') || 'all', t])""")
    # the first view: channels 3 and 6 of its level's chunks in view, each channel alone (stored as it is)
    before = [(tuple(a), ch) for a, ch, t in requests if t < first_view]
    view = sorted({a for a, _ in before})
    assert view and all(a[0] == level for a in view)
    assert sorted(before) == sorted((a, ch) for a in view for ch in ("3", "6"))
    # then those chunks whole (the other six channels with them), then every level-0 chunk whole
    later = sorted((tuple(a), ch) for a, ch, t in requests if t >= first_view)
    assert later == sorted([(a, "all") for a in view] + [(a, "1") for a in view]
                           + [((0, i, j), "all") for i in range(3) for j in range(3)])
    ranges = page.evaluate("() => window.cellloop.editor.channels.channels.map((c) => [c.loaded, c.min, c.max])")
    assert ranges[6] == [True, 30100, 30900]  # the saved range, kept
    for c in (0, 1, 3, 7):  # auto ranges from each channel's own values
        loaded, lo, hi = ranges[c]
        assert loaded and c * 5000 <= lo < hi <= c * 5000 + 2000, (c, ranges[c])
    # grayscale on channel 5, which the first view did not fetch: exact values under the cursor
    page.evaluate("""() => { const ch = window.cellloop.editor.channels; ch.gray = true; ch.active = 5; ch.changed(); }""")
    assert page.evaluate("() => window.cellloop.editor.channels.shownIndices()") == [5]
    for r, c in ((700, 300), (20, 1090)):
        page.evaluate(f"() => {{ const e = window.cellloop.editor; e.view.scale = 2; e.view.centerOn({r}, {c}); e.drawNow(); }}")
        page.mouse.move(*screen(page, r, c))
        text = \
            page.evaluate("() => window.cellloop.editor.cursorInfo.textContent")
        assert f"({r}, {c}) · marker5 {int(image[r, c, 5])} ·" in text, text
    plane = page.evaluate("() => Array.from(window.cellloop.editor.planes[5].subarray(1099 * 1100))")
    assert np.array_equal(np.array(plane), image[-1, :, 5])
    assert errors == []
