"""The whole flow in a real browser: the FiftyOne App in Debian's Chromium, driven by Playwright.

On the demo datasets: open the operator browser, fill compute_class_influence's
form (a tiny configuration), schedule it, let `fiftyone delegated launch` run
it, see the new field in the sidebar, open the "Class influence" panel, pick
the run, and click a class's bar: the grid must show that class's samples.
Then, on a sample-influence run: select a target test sample, open the
"Sample influence" panel, and show its most harmful pretraining images.
Screenshots go to $TRANSFERSCOPE_ARTIFACTS_DIR (default ./artifacts)/browser.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import fiftyone as fo
import fiftyone.operators.delegated as food
import pytest
from fiftyone.operators.executor import ExecutionRunState
from helpers import skip_unless_ci

try:
    from playwright import sync_api
except ImportError:
    skip_unless_ci("playwright is not installed (pip install playwright)")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    skip_unless_ci("Debian's chromium is not installed (apt-get install chromium)")
pytestmark = pytest.mark.slow

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUN_KEY = "browser"
# what the probe of this machine found Chromium needs here: no sandbox as root,
# no GPU, and no background connections (the network is closed)
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def artifacts():
    folder = os.path.join(
        os.environ.get("TRANSFERSCOPE_ARTIFACTS_DIR", os.path.join(REPO_ROOT, "artifacts")),
        "browser",
    )
    os.makedirs(folder, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def demo():
    from transferscope.demo import load_or_build_demo

    return load_or_build_demo()


@pytest.fixture(scope="module")
def app(demo):
    """The App server on the pretraining dataset, in its own process group."""
    pretrain, _ = demo
    port = _free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            os.path.join(REPO_ROOT, "tests", "helpers", "app_server.py"),
            pretrain.name,
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if server.poll() is not None:
                pytest.fail(f"the App server exited: {server.stdout.read()[-3000:]}")
            time.sleep(1)
    else:
        pytest.fail("the App server did not answer within 120 s")
    yield url
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(timeout=30)


@pytest.fixture(scope="module")
def worker():
    """`fiftyone delegated launch`: runs what the App schedules."""
    exe = os.path.join(os.path.dirname(sys.executable), "fiftyone")
    proc = subprocess.Popen(
        [exe, "delegated", "launch"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    yield proc
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)


@pytest.fixture()
def page(app):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.set_default_timeout(60_000)
        yield page
        browser.close()


def _control(page, label):
    """The first control (a select or a visible input) after the label ``label``."""
    return page.locator(
        f'xpath=//p[normalize-space()="{label}"]/following::*'
        '[@role="combobox" or self::input[not(@aria-hidden="true")]][1]'
    )


def _choose(page, label, option):
    control = _control(page, label)
    # the form re-resolves after each change: wait until this field is a select
    _wait_for(
        lambda: control.count() and control.get_attribute("role") == "combobox",
        30,
        f"{label!r} to offer choices",
    )
    control.click()
    page.get_by_role("option", name=option, exact=True).click()
    _wait_for(lambda: not page.get_by_role("listbox").count(), 10, "the menu to close")


def _fill(page, label, value):
    _control(page, label).fill(str(value))
    page.wait_for_timeout(300)


def _open(page, url, dataset):
    page.goto(f"{url}/datasets/{dataset}", wait_until="load")
    page.locator('[data-cy="new-panel-btn"]').first.wait_for()
    page.wait_for_timeout(1500)
    dismiss = page.get_by_text("Dismiss", exact=True)  # the App's "Explore Enterprise" card
    if dismiss.count():
        dismiss.first.click()


def _sample_count(page):
    """The grid's "N samples" count."""
    count = page.get_by_text(re.compile(r"^[\d,]+ samples$"))
    if not count.count():
        return None
    return int(count.first.inner_text().split()[0].replace(",", ""))


def _wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def test_compute_in_the_app_then_click_a_class_in_the_panel(demo, app, worker, page, artifacts):
    pretrain, target = demo
    for ds in (pretrain, target):
        if RUN_KEY in ds.list_runs():
            ds.delete_run(RUN_KEY)
    _open(page, app, pretrain.name)

    # --- the operator browser: find the operator, fill its form, schedule it ---
    page.keyboard.press("`")
    page.keyboard.type("compute class influence")
    page.keyboard.press("Enter")
    _control(page, "Target dataset").wait_for()
    _choose(page, "Target dataset", target.name)
    _choose(page, "Train split", "train")
    _choose(page, "Test split", "test")
    _fill(page, "Number of models", 6)
    _fill(page, "Held-out models", 3)
    _fill(page, "Pretraining epochs", 1)
    _fill(page, "Run key", RUN_KEY)
    page.screenshot(path=os.path.join(artifacts, "1_operator_form.png"))
    execute = page.locator("button", has_text=re.compile("^(Schedule|Execute)$")).first
    execute.locator("xpath=following-sibling::button[1]").click()  # the execution menu
    page.get_by_role("menuitem").filter(has_text="Schedule").click()
    page.locator("button", has_text=re.compile("^Schedule$")).first.click()

    # --- the worker runs it ----------------------------------------------------
    service = food.DelegatedOperationService()

    def finished():
        ops = [
            op
            for op in service.list_operations(dataset_name=pretrain.name)
            if op.operator.endswith("/compute_class_influence")
            and (op.context.request_params or {}).get("params", {}).get("run_key") == RUN_KEY
        ]
        done = [op for op in ops if op.run_state in ExecutionRunState.TERMINAL_STATES]
        return done[-1] if done else None

    op = _wait_for(finished, 300, "the scheduled compute_class_influence to finish")
    assert op.run_state == ExecutionRunState.COMPLETED, (op.run_state, op.result)
    assert op.status.label == "9/9 models trained"  # 6 subset models, 3 held out
    pretrain.reload()
    assert pretrain.has_sample_field(f"{RUN_KEY}_influence")

    # --- the App shows the new field -----------------------------------------
    page.reload(wait_until="load")
    page.locator(f'[data-cy="sidebar-field-{RUN_KEY}_influence"]').wait_for()
    page.screenshot(path=os.path.join(artifacts, "2_sidebar_field.png"))

    # --- the panel: pick the run, click the most harmful class ----------------
    total = _wait_for(lambda: _sample_count(page), 60, "the grid's sample count")
    assert total == len(pretrain)
    page.locator('[data-cy="new-panel-btn"]').first.click()
    page.get_by_text("Class influence", exact=True).first.click()
    _control(page, "Influence run").wait_for()
    _choose(page, "Influence run", RUN_KEY)
    panel = page.locator('[data-cy="panel-content-class_influence_panel"]')
    chart = panel.locator(".js-plotly-plot").first
    bars = chart.locator("g.trace.bars g.point path")
    target.reload()
    results = target.load_run_results(RUN_KEY)
    ranked = [row[0] for row in results.ranking()]
    # the chart of this run, not the one the panel drew before the choice (the
    # demo's run has the same classes, so a bar count cannot tell them apart)
    _wait_for(
        lambda: (
            chart.evaluate("el => el.data && el.data[0].x") == ranked
            and bars.count() == len(ranked)
        ),
        60,
        f"one bar per pretraining class of run {RUN_KEY!r}",
    )
    page.screenshot(path=os.path.join(artifacts, "3_panel.png"))
    message = page.get_by_text(re.compile(r"^\S+: its pretraining samples \(\d+ samples"))

    # where plotly draws the last bar: its own axes map the class to pixels (the
    # DOM order of bar paths, or a bar's box when its height is ~0, may mislead)
    last_bar_centre = """(el, name) => {
        const xa = el._fullLayout.xaxis, ya = el._fullLayout.yaxis;
        const i = el.data[0].x.indexOf(name), box = el.getBoundingClientRect();
        return [box.left + xa._offset + xa.d2p(name),
                box.top + ya._offset + ya.d2p(el.data[0].y[i] / 2)];
    }"""

    def click_last_bar():
        x, y = chart.evaluate(last_bar_centre, ranked[-1])
        page.mouse.move(x, y)  # plotly picks the bar under the pointer on hover
        page.wait_for_timeout(300)
        page.mouse.click(x, y)
        try:
            message.wait_for(timeout=10_000)
            return True
        except sync_api.TimeoutError:  # e.g. a closing menu took the click
            return False

    _wait_for(click_last_bar, 60, "a click on a bar to show its class")
    name, shown = re.match(
        r"^(\S+): its pretraining samples \((\d+) samples", message.inner_text()
    ).groups()
    assert name == ranked[-1]  # the last bar is the most harmful class
    expected = pretrain.match(fo.ViewField("ground_truth.label") == name).count()
    assert int(shown) == expected
    _wait_for(
        lambda: _sample_count(page) == expected,
        60,
        f"the grid to show the {expected} samples of {name!r}",
    )
    page.screenshot(path=os.path.join(artifacts, "4_class_clicked.png"))


def test_from_a_selected_target_sample_to_its_most_harmful_images(demo, app, page, artifacts):
    import transferscope as ts

    pretrain, target = demo
    key, top_k = "browser_images", 4
    tiny = dict(num_models=1, holdout_models=0, epochs=1, overwrite=True, progress=False)
    # an older run whose key sorts after this one's (as the demo's "demo_samples"
    # does): the panel must open on the newest run, not the last by name
    ts.compute_sample_influence(pretrain, target, "zz_older", top_k=2, **tiny)
    ts.compute_sample_influence(pretrain, target, key, top_k=top_k, **tiny)
    target.save_view("browser_test_split", target.match_tags("test"), overwrite=True)
    try:
        # the test split in the grid: select its first sample, then open the panel
        _open(page, app, f"{target.name}?view=browser-test-split")
        _wait_for(lambda: _sample_count(page) == len(target.match_tags("test")), 60, "the split")
        looker = page.locator('[data-cy="looker"]').first
        checkbox = looker.locator('[data-cy="looker-checkbox-"]')

        def hover_shows_the_checkbox():
            looker.hover()  # the checkbox shows on hover
            page.wait_for_timeout(500)
            return checkbox.is_visible()

        _wait_for(hover_shows_the_checkbox, 30, "the first sample's checkbox")
        checkbox.click()
        page.locator('[data-cy="new-panel-btn"]').first.click()
        page.get_by_text("Sample influence", exact=True).first.click()
        panel = page.locator('[data-cy="panel-content-sample_influence_panel"]')
        show = panel.get_by_text("Show its most harmful pretraining images")
        show.wait_for()
        page.screenshot(path=os.path.join(artifacts, "5_sample_panel.png"))
        # the table is the selected sample's: its most harmful image comes first
        selected = target.match_tags("test").first()
        worst = selected[f"{key}_harmful"].classifications[0]
        assert f"{worst.score:+.3g}" in panel.inner_text()

        show.click()
        header = page.locator('[data-cy="selector-dataset"]')  # an input or its wrapper

        def dataset_shown():
            return header.evaluate("e => (e.querySelector('input') || e).value || e.textContent")

        _wait_for(
            lambda: pretrain.name in (dataset_shown() or "") and _sample_count(page) == top_k,
            60,
            f"the grid to show {top_k} images of {pretrain.name}",
        )
        page.screenshot(path=os.path.join(artifacts, "6_harmful_images.png"))
    finally:
        target.delete_saved_view("browser_test_split")
        for run_key in (key, "zz_older"):
            target.delete_run(run_key)
            pretrain.delete_run(run_key)
