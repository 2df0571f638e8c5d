"""The dashboard end to end, in a real browser: launch a tiny run from the Train page, watch its curves
grow live, then search similar images for a clicked test picture on the Retrieval page, and last
watch the run's map form on the Embeddings page (step the film, click a dot, see its picture). And
Compare, opened while a run trains, draws the run's newer curves by itself, and Home's runs table
follows the run's epochs.

Drives headless Debian Chromium with Playwright against `streamlit run app.py` (see tests/browser.py).
Skips when Playwright or Chromium is missing, unless BYOL_REQUIRE_BROWSER=1 (CI), where it fails.
Screenshots of every stage go to $BYOL_SCREENSHOTS when set (else the test's tmp_path), for a person
to look at. About 70 s on an idle 2-core machine, up to 3 minutes on a busy one.

Every setting is typed into the page's own widgets, the way a person would: synthetic data, a width-8
network with small heads, 2,048 training images in batches of 64 for 3 epochs (96 steps, a loss row
every 5 steps), kNN every epoch on a 256-image bank and 100 test images, fp32.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from browser import (
    StreamlitServer,
    browser_page,
    keyed_button,
    progress_text,
    require_browser,
    screenshot,
    select_option,
    set_number,
    wait_idle,
)

RUN_NAME = "e2e-run"
EPOCHS, BATCH, SUBSET = 3, 64, 2048
TOTAL_STEPS = EPOCHS * (SUBSET // BATCH)
TIMEOUT_MS = 120_000  # for anything the slow, busy machine must compute before it shows
STEP_PATTERN = r"step (\d[\d,]*) of (\d[\d,]*)"
LAPTOP, TALL = {"width": 1280, "height": 800}, {"width": 1400, "height": 2000}

# The number of points drawn in a chart (its first trace) and the progress bar's step, read in the page.
POINTS_JS = """(key) => {
    const plot = document.querySelector(`.st-key-${key} .js-plotly-plot`);
    // _fullData: plotly's decoded traces (data[0].x may still be the base64 typed-array spec it was sent).
    const trace = plot && plot._fullData && plot._fullData[0];
    return trace && trace.x ? trace.x.length : -1;
}"""


# A run's "Epochs" cell in the page's runs table, read from the table's accessible copy of its cells
# (the grid itself is drawn on a canvas); null while the table or the row is not there.
EPOCHS_CELL_JS = """(name) => {
    const rows = [...document.querySelectorAll('[data-testid="stDataFrame"] table tr')];
    const header = rows.length ? [...rows[0].children].map((c) => c.innerText.trim()) : [];
    const row = rows.find((r) => r.children.length && r.children[0].innerText.trim() === name);
    const column = header.indexOf("Epochs");
    return row && column >= 0 ? row.children[column].innerText.trim() : null;
}"""


@pytest.fixture
def shots(tmp_path) -> Path:
    folder = Path(os.environ.get("BYOL_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def server(tmp_path, request):
    """The dashboard on a free port with empty runs and cache folders; always stopped afterwards."""
    require_browser()
    (tmp_path / "runs").mkdir()
    (tmp_path / "cache").mkdir()
    # One torch thread: the browser, the server and the training share a small machine.
    extra = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    app = StreamlitServer(tmp_path / "runs", tmp_path / "cache", tmp_path / "streamlit.log", extra)
    request.addfinalizer(app.stop)  # also when start() itself fails half-way
    app.start()
    return app


def _step(text: str) -> int:
    match = re.search(STEP_PATTERN, text)
    return int(match.group(1).replace(",", "")) if match else -1


def _expect_neighbours(page, prefix: str, k: int) -> None:
    """k captions "<prefix> N: class (0.93)" numbered 1..k (more decimals where two would round up
    to 1), each under a picture that has arrived."""
    from playwright.sync_api import expect

    pattern = re.compile(rf"^{prefix} (\d+): \S.* \((-?\d\.\d{{2,4}})\)$")
    captions = page.locator("[data-testid='stImageCaption']").filter(has_text=re.compile(rf"^{prefix} \d+: "))
    expect(captions).to_have_count(k)
    texts = [t.strip() for t in captions.all_inner_texts()]
    numbers = []
    for text in texts:
        match = pattern.match(text)
        assert match, f"unexpected {prefix} caption {text!r}"
        numbers.append(int(match.group(1)))
        assert -1.0 <= float(match.group(2)) <= 1.0, text
    assert numbers == list(range(1, k + 1)), texts
    page.wait_for_function(
        """([prefix, k]) => {
            const captions = [...document.querySelectorAll('[data-testid="stImageCaption"]')]
                .filter((c) => c.innerText.trim().startsWith(prefix + ' '));
            return captions.length === k && captions.every((c) => {
                const img = c.parentElement.querySelector('img');
                return img && img.complete && img.naturalWidth > 0;
            });
        }""",
        arg=[prefix, k],
    )


def _first_picture_box(page, prefix: str) -> dict:
    """Where the picture captioned "<prefix> 1: ..." is on the screen: top and bottom, and the screen's height."""
    return page.evaluate(
        """(prefix) => {
            const caption = [...document.querySelectorAll('[data-testid="stImageCaption"]')]
                .find((c) => c.innerText.trim().startsWith(prefix + ' 1: '));
            const box = caption.parentElement.querySelector('img').getBoundingClientRect();
            return { top: box.top, bottom: box.bottom, viewport: window.innerHeight };
        }""",
        prefix,
    )


def test_train_watch_and_retrieve(server, shots):
    # Tall: Streamlit scrolls inside the page, so a full-page screenshot shows only the viewport.
    with browser_page(server, TALL, TIMEOUT_MS, shots / "99-failure.png") as page:
        _scenario(page, server.url, server.runs_dir, shots)


def test_compare_and_home_redraw_themselves_while_a_run_trains(server, shots):
    """A person who launched the batch-norm experiment from Compare watches the collapse happen there:
    the page, left alone, draws the loss rows a training run writes after it opened; Home's runs table
    then counts the run's epochs on by itself too. The run is
    started from the command line (runs from there show in the dashboard too) with a schedule far
    longer than the test, and stopped with Ctrl-C's signal at the end."""
    env = {**server.env(), "OMP_NUM_THREADS": "1"}
    tiny = ["subset=1024", "projector_hidden=32", "projector_dim=16", "predictor_hidden=32", "log_every=2"]
    tiny += ["eval_bank_size=256", "eval_query_size=100", "knn_k=20"]
    command = [sys.executable, "-m", "byol", "train", "--data", "synthetic", "--epochs", "500", "--width", "8"]
    command += ["--batch-size", "64", "--precision", "fp32", "--name", "live-cli"] + [a for f in tiny for a in ("--set", f)]
    # Its progress bar goes to a file: a pipe nobody reads fills up (64 KB) and would stall the run.
    log = shots / "compare-cli-run.log"
    with open(log, "wb") as output:
        trainer = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        metrics = server.runs_dir / "live-cli" / "metrics.jsonl"
        deadline = time.time() + TIMEOUT_MS / 1000
        while not (metrics.exists() and '"kind": "step"' in metrics.read_text()):  # the run has begun to train
            assert trainer.poll() is None, log.read_text(errors="replace")
            assert time.time() < deadline, "the command-line run wrote no loss row"
            time.sleep(0.5)
        with browser_page(server, TALL, TIMEOUT_MS, shots / "compare-99-failure.png") as page:
            page.goto(f"{server.url}/Compare")
            first = page.wait_for_function(
                f"() => {{ const n = ({POINTS_JS})('overlay_loss'); return n > 0 ? n : null; }}", timeout=TIMEOUT_MS
            ).json_value()
            screenshot(page, shots, "compare-01-live-first")
            page.wait_for_function(f"(n) => ({POINTS_JS})('overlay_loss') > n + 2", arg=first, timeout=TIMEOUT_MS)
            screenshot(page, shots, "compare-02-live-later")
            # Home's runs table follows the run too: its epochs cell changes without a reload.
            page.goto(server.url)
            epochs = page.wait_for_function(f"() => ({EPOCHS_CELL_JS})('live-cli')", timeout=TIMEOUT_MS).json_value()
            page.wait_for_function(
                f"(e) => {{ const now = ({EPOCHS_CELL_JS})('live-cli'); return now && now !== e; }}", arg=epochs
            )
            screenshot(page, shots, "compare-03-home-live")
        assert trainer.poll() is None  # the pages grew while the run was still training
    finally:
        trainer.send_signal(signal.SIGINT)
        try:
            trainer.wait(timeout=60)
        except subprocess.TimeoutExpired:
            trainer.kill()
            trainer.wait()


def _scenario(page, url: str, runs_dir: Path, shots: Path) -> None:
    from playwright.sync_api import expect

    # --- Train: fill in a tiny run with the page's own controls ------------------------------------
    page.goto(f"{url}/Train")
    expect(page.get_by_role("heading", name="Train", exact=True)).to_be_visible()
    launch = keyed_button(page, "launch")
    launch.wait_for()
    wait_idle(page)
    screenshot(page, shots, "01-train-empty")

    page.get_by_text("Synthetic shapes", exact=False).click()
    expect(page.locator(".st-key-new_path")).to_have_count(0)  # the folder path box goes away
    wait_idle(page)
    # Widget keys carry the preset's name; the page suggests "cpu" on a machine without a GPU.
    preset = "cpu"
    set_number(page, f"new_epochs_{preset}", EPOCHS)
    set_number(page, f"new_batch_{preset}", BATCH)
    set_number(page, f"new_width_{preset}", 8)

    page.get_by_text("Advanced settings", exact=True).click()
    for field, value in (("subset", SUBSET), ("ph", 32), ("pd", 16), ("qh", 32), ("bank", 256), ("query", 100), ("k", 20)):
        set_number(page, f"new_{field}_{preset}", value)
    select_option(page, f"new_precision_{preset}", "fp32")
    name_box = page.locator(".st-key-new_run_name input")
    name_box.fill(RUN_NAME)
    name_box.press("Enter")
    wait_idle(page)
    expect(launch).to_be_enabled()  # disabled while the page lists launch problems
    screenshot(page, shots, "02-train-settings")

    # --- launch and watch it live --------------------------------------------------------------------
    launch.click()
    expect(page.get_by_role("heading", name=RUN_NAME)).to_be_visible()
    expect(page.get_by_text(f"width 8 · {EPOCHS} epochs · batch {BATCH} · data: synthetic")).to_be_visible()
    # Every value typed into the page reached the run's saved config.
    saved = json.loads((runs_dir / RUN_NAME / "config.json").read_text())
    typed = dict(
        data="synthetic",
        epochs=EPOCHS,
        batch_size=BATCH,
        width=8,
        subset=SUBSET,
        projector_hidden=32,
        projector_dim=16,
        predictor_hidden=32,
        eval_bank_size=256,
        eval_query_size=100,
        knn_k=20,
        precision="fp32",
        preset="cpu",
    )
    assert {field: saved.get(field) for field in typed} == typed

    # First observation: training has taken steps and the loss chart has points.
    handle = page.wait_for_function(
        f"""() => {{
            const bar = document.querySelector('[data-testid="stProgress"]');
            const m = bar && bar.innerText.match(/{STEP_PATTERN}/);
            return m && Number(m[1].replace(/,/g, '')) > 0 && ({POINTS_JS})('chart_loss') > 0 ? bar.innerText : null;
        }}""",
        timeout=TIMEOUT_MS,
    )
    first_text = handle.json_value()
    first_step, first_points = _step(first_text), page.evaluate(POINTS_JS, "chart_loss")
    assert re.search(rf"of {TOTAL_STEPS}\b", first_text), f"expected {TOTAL_STEPS} steps in total: {first_text!r}"
    # .first: while the live fragment reruns, Streamlit can briefly hold the old chart beside the new one.
    expect(page.locator(".st-key-chart_knn .js-plotly-plot").first).to_be_visible()  # the random-init kNN point
    screenshot(page, shots, "03-train-live-first")

    # Second observation: the same page, untouched, shows a later step and more loss points.
    page.wait_for_function(
        f"""([step, points]) => {{
            const bar = document.querySelector('[data-testid="stProgress"]');
            const m = bar && bar.innerText.match(/{STEP_PATTERN}/);
            return m && Number(m[1].replace(/,/g, '')) > step && ({POINTS_JS})('chart_loss') > points;
        }}""",
        arg=[first_step, first_points],
        timeout=TIMEOUT_MS,
    )
    second_text = progress_text(page)
    second_step, second_points = _step(second_text), page.evaluate(POINTS_JS, "chart_loss")
    assert second_step > first_step and second_points > first_points, (first_text, second_text)
    screenshot(page, shots, "04-train-live-second")

    # --- the run finishes; the page redraws itself with the final curves ---------------------------------
    expect(page.get_by_text(f"Finished {EPOCHS} epochs ({TOTAL_STEPS} steps)")).to_be_visible(timeout=180_000)
    expect(page.locator("[data-testid='stProgress']")).to_have_count(0)
    # kNN at step 0 (random init) and after each epoch.
    page.wait_for_function(f"() => ({POINTS_JS})('chart_knn') === {EPOCHS + 1}")
    assert page.evaluate(POINTS_JS, "chart_loss") > second_points
    wait_idle(page)
    screenshot(page, shots, "05-train-finished")

    # --- Retrieval: follow the run's link; the first visit prepares the search by itself ----------------
    # A laptop screen: the results must show up where the person is looking, without scrolling.
    page.set_viewport_size(LAPTOP)
    page.get_by_role("link", name=re.compile("Find similar images")).click()
    expect(page.get_by_role("heading", name=re.compile("Retrieval"))).to_be_visible()
    expect(page.locator(".st-key-ret-run").get_by_role("combobox")).to_have_value(RUN_NAME)
    pictures = page.locator("button[data-index]")  # the picture grid: each test image is its own button
    pictures.first.wait_for(timeout=TIMEOUT_MS)
    assert keyed_button(page, "compute-ret").count() == 0  # nothing asked to be clicked first
    wait_idle(page)
    screenshot(page, shots, "07-retrieval-gallery")

    # Click the first picture itself; its data-index is the test image's number.
    picture = pictures.first
    index = int(picture.get_attribute("data-index"))
    alt = picture.get_by_role("img").get_attribute("alt")
    assert re.fullmatch(rf"test image #{index} \(\S.*\)", alt), alt
    picture.scroll_into_view_if_needed()
    clicked_at = picture.bounding_box()
    picture.click()
    results = page.get_by_role("dialog")
    expect(results.get_by_role("heading", name=re.compile(rf"most like test image #{index}\b"))).to_be_visible()
    k = int(results.locator(".st-key-ret-k [data-testid='stSliderThumbValue']").inner_text())  # as the user sees it
    assert k == 10, f"the page's default k changed to {k}; update this test's expectation"
    _expect_neighbours(page, "neighbour", k)
    first = _first_picture_box(page, "neighbour")
    # The first neighbour lies wholly inside the laptop screen right after the click, no scrolling.
    assert 0 <= first["top"] and first["bottom"] <= first["viewport"], (first, clicked_at)
    print(f"click at y={clicked_at['y']:.0f}, first neighbour at y={first['top']:.0f} of {first['viewport']} px")
    wait_idle(page)
    screenshot(page, shots, "08-retrieval-neighbours")

    # --- the comparison: random init computes by itself (progress, no button) beside raw pixels -----------
    page.evaluate(
        """() => {
            window.sawProgress = false;
            const seen = () => { if (document.querySelector('[role=dialog] [data-testid="stProgress"]')) window.sawProgress = true; };
            new MutationObserver(seen).observe(document.body, { childList: true, subtree: true });
        }"""
    )
    results.locator(".st-key-ret-compare").get_by_text("Compare with random init").click()
    _expect_neighbours(page, "random init", k)
    _expect_neighbours(page, "pixels", k)
    _expect_neighbours(page, "neighbour", k)
    assert page.evaluate("window.sawProgress"), "the random-init search bank showed no progress while it was computed"
    assert keyed_button(page, "compute-ret-random").count() == 0
    wait_idle(page)
    screenshot(page, shots, "09-retrieval-compare")

    page.keyboard.press("Escape")  # closes the results; the gallery is there as it was
    expect(page.get_by_role("dialog")).to_have_count(0)
    expect(page.locator(f"button[data-index='{index}']")).to_be_visible()
    page.set_viewport_size(TALL)

    _visit_embeddings_film(page, url, shots)


# The film's chart (its key carries the frame): the frame's title and the first point's place.
FILM_JS = """() => {
    const plot = document.querySelector('[class*="st-key-film-map-"] .js-plotly-plot');
    if (!plot || !plot._fullLayout || !plot._fullData || !plot._fullData.length) return null;
    const trace = plot._fullData[0];
    return {title: plot._fullLayout.title.text.replace(/<[^>]*>/g, ''), x: trace.x[0], y: trace.y[0], points: trace.x.length};
}"""


def _visit_embeddings_film(page, url: str, shots: Path) -> None:
    """Embeddings for the same run: compute the map and the film, step the film, click a dot, see its picture."""
    from playwright.sync_api import expect

    page.goto(f"{url}/Embeddings")
    expect(page.get_by_role("heading", name=re.compile("^Embeddings"))).to_be_visible()
    expect(page.locator(".st-key-emb-run").get_by_role("combobox")).to_have_value(RUN_NAME)
    compute = keyed_button(page, "compute-emb")
    compute_film = keyed_button(page, "compute-film")
    # The shown checkpoint's map and kNN compute by themselves on the first visit (the page asks only
    # while another computation runs); the film waits to be asked. numba compiles UMAP on first use.
    compute.or_(compute_film).first.wait_for(timeout=300_000)
    if compute.count():
        wait_idle(page)
        compute.click()
    compute_film.wait_for(timeout=300_000)
    wait_idle(page)
    screenshot(page, shots, "10-embeddings-film-compute")
    compute_film.click()
    slider = page.locator(f".st-key-film-frame-{RUN_NAME} input[type='range']")
    slider.wait_for(timeout=300_000)
    wait_idle(page)
    last = page.wait_for_function(FILM_JS).json_value()
    assert last["title"].startswith(f"step {TOTAL_STEPS:,}"), last  # the trained network's map comes first
    screenshot(page, shots, "11-embeddings-film-last")

    # Step the film back one snapshot with the slider: another title, the same image elsewhere.
    slider.focus()
    page.keyboard.press("ArrowLeft")
    earlier = page.wait_for_function(
        f"() => {{ const f = ({FILM_JS})(); return f && f.title !== {json.dumps(last['title'])} ? f : null; }}"
    ).json_value()
    assert earlier["points"] == last["points"] and (earlier["x"], earlier["y"]) != (last["x"], last["y"]), (earlier, last)
    wait_idle(page)
    screenshot(page, shots, "12-embeddings-film-earlier")

    # Click a dot: its picture appears beside the map, 8 times its 32 pixels.
    point = page.locator("[class*='st-key-film-map-'] .js-plotly-plot .scatterlayer path.point").first
    box = point.bounding_box()
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    caption = page.locator("[data-testid='stImageCaption']").filter(has_text=re.compile(r"^test image #\d+ \("))
    expect(caption).to_have_count(1)
    picture = page.wait_for_function(
        """() => {
            const caption = [...document.querySelectorAll('[data-testid="stImageCaption"]')]
                .find((c) => /^test image #\\d+ \\(/.test(c.innerText.trim()));
            const img = caption && caption.parentElement.querySelector('img');
            if (!img || !img.complete || img.naturalWidth === 0) return null;
            const r = img.getBoundingClientRect();
            return {width: img.naturalWidth, left: r.left, top: r.top};
        }"""
    ).json_value()
    plot = page.locator("[class*='st-key-film-map-'] .js-plotly-plot").bounding_box()
    assert picture["width"] == 256, picture
    assert picture["left"] >= plot["x"] + plot["width"] - 1 and picture["top"] < plot["y"] + plot["height"], (picture, plot)
    wait_idle(page)
    screenshot(page, shots, "13-embeddings-film-picture")
