"""Review a sweep in the MLflow UI as a person would: `shrinkgate ui` on a loopback port, headless Chromium
(Debian's, driven by Playwright's Python package). First load of the link `shrinkgate ui` prints (the runs with
the verdict columns, the verdict in the parent's description); then the runs table as a user configures it by
hand (parent expanded, columns chosen), and the Pareto plot among the parent run's artifacts. Screenshots go to the
pytest tmp dir and to out/ (ignored by git)."""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
try:
    from playwright import sync_api
except ImportError:  # reported by `browser` below: a missing dependency fails this feature's tests
    sync_api = None
from typer.testing import CliRunner

from pipeline import metrics as M
from pipeline.cli import app

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "out"
EXPERIMENT = "ui-review"
TIMEOUT_MS = 90_000  # two shared cores: the UI's first paint can take tens of seconds
METRIC_COLUMNS = (M.MMLU_ACC, M.MMLU_ACC_STDERR, M.DECODE_TOK_S, M.WEIGHT_BYTES)
TAG_COLUMNS = ("model", "variant", "role", "method", "frontier.decode_tok_s", "frontier.weight_bytes")
HIDDEN_COLUMNS = ("Dataset", "Source", "Models")  # empty for shrinkgate runs


@pytest.fixture(scope="session", autouse=True)
def browser():
    """Fails, never skips, when the browser is missing: the UI review is a claimed feature. Session scope puts
    this check before the session's other fixtures (the tiny model build)."""
    if sync_api is None:
        pytest.fail(
            "playwright is not installed: run `bash scripts/install.sh --with-browser` (the dev extra)", pytrace=False
        )
    if not CHROMIUM.is_file():
        pytest.fail(
            f"no Chromium at {CHROMIUM}: run `bash scripts/install.sh --with-browser` (Debian's chromium via apt)",
            pytrace=False,
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, tiny_model_dir):
    """A finished sweep of two variants in a tmp sqlite store (the report step logs its plots on the parent)."""
    tmp = tmp_path_factory.mktemp("ui")
    uri = f"sqlite:///{tmp}/mlflow.db"
    doc = {
        "name": EXPERIMENT,
        "models": [{"name": "tiny", "source": str(tiny_model_dir), "role": "candidate"}],
        "variants": [
            {"name": "none", "method": "none"},
            {"name": "pruned", "method": "magnitude-prune", "params": {"amount": 0.5}},
        ],
        "eval": {
            "num_fewshot": 0,
            "subjects": ["abstract_algebra", "anatomy"],
            "limit_per_subject": 1,
            "batch_size": 4,
        },
        "speed": {"prompt_tokens": 16, "new_tokens": 4, "batch_sizes": [1], "warmup": 0, "repeats": 1, "threads": 1},
        "tracking": {"uri": uri, "experiment": EXPERIMENT},
    }
    (tmp / "recipe.yaml").write_text(yaml.safe_dump(doc))
    result = CliRunner().invoke(app, ["run", str(tmp / "recipe.yaml")])
    assert result.exit_code == 0, result.output

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([exp.experiment_id], max_results=50)
    parent = next(r for r in runs if r.data.tags.get(M.TAG_KIND) == "sweep")
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    return tmp, uri, client, exp.experiment_id, parent, children


@pytest.fixture(scope="module")
def ui_server(sweep):
    """`shrinkgate ui` itself (same code path as the command) on a free loopback port; stopped by its pid."""
    tmp, uri = sweep[0], sweep[1]
    port = _free_port()
    exe = Path(sys.executable).with_name("shrinkgate")
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", "pipeline.cli"]
    cmd += ["ui", "--tracking-uri", uri, "--host", "127.0.0.1", "--port", str(port)]
    log = open(tmp / "ui.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while not _answers(f"{url}/health"):
        if proc.poll() is not None or time.monotonic() > deadline:
            log.close()
            pytest.fail(f"`shrinkgate ui` did not answer on {url}: {(tmp / 'ui.log').read_text()[-2000:]}")
        time.sleep(0.5)
    try:
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # the ui command ends its server's process group
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        log.close()


@pytest.fixture(scope="module")
def page(ui_server):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        pg = browser.new_page(viewport={"width": 1700, "height": 900})
        pg.set_default_timeout(TIMEOUT_MS)
        try:
            yield pg
        finally:
            browser.close()


def _shot(page, tmp: Path, name: str) -> Path:
    path = tmp / name
    page.screenshot(path=str(path), full_page=False)
    OUT.mkdir(exist_ok=True)
    shutil.copyfile(path, OUT / name)
    return path


def _close_assistant(page) -> None:
    """MLflow 3 opens an "MLflow Assistant" side panel; it only narrows the table."""
    close = page.get_by_role("button", name="Close")
    if close.count():
        try:
            close.first.click(timeout=5_000)
        except sync_api.Error:
            pass


def _toggle_columns(page, names, *, want: bool) -> None:
    """Columns dropdown: search each name, expand the groups, set its checkbox to `want`."""
    page.get_by_test_id("column-selection-dropdown").first.click()
    search = page.get_by_placeholder("Search columns")
    for name in names:
        search.fill(name)
        title = page.locator(".du-bois-light-tree-title", has_text=re.compile(rf"^{re.escape(name)}$"))
        for _ in range(20):
            if title.count():
                break
            for switcher in page.locator(".du-bois-light-tree-switcher_close").all():
                switcher.click()
            page.wait_for_timeout(250)
        node = page.locator(".du-bois-light-tree-treenode").filter(has=title).first
        checked = "du-bois-light-tree-treenode-checkbox-checked" in (node.get_attribute("class") or "")
        if checked != want:
            node.locator(".du-bois-light-tree-checkbox").click()
    search.fill("")
    page.keyboard.press("Escape")


def _grid_cells(page) -> dict[str, dict[str, str]]:
    """run name -> {col-id: text} from the AG Grid (its pinned and scrolled halves share row-index)."""
    cells = page.evaluate(
        """() => Array.from(document.querySelectorAll('[role=row][row-index] [role=gridcell]')).map(c =>
            [c.closest('[role=row]').getAttribute('row-index'), c.getAttribute('col-id'), c.innerText.trim()])"""
    )
    rows: dict[str, dict[str, str]] = {}
    for index, col, text in cells:
        rows.setdefault(index, {})[col or ""] = text
    named = {}
    for row in rows.values():
        name = next((t for c, t in row.items() if "Run Name" in c), None)
        if name:
            named[name.splitlines()[-1].strip()] = row
    return named


def _cell(row: dict[str, str], key: str) -> str:
    """The cell whose col-id names `key` (e.g. metrics.`mmlu_acc`, tags.`variant`)."""
    hits = [t for c, t in row.items() if c.endswith(f"`{key}`") or c.endswith(f".{key}")]
    assert hits, f"no column {key!r} in {sorted(row)}"
    return hits[0]


def _printed_link(tmp: Path) -> str:
    """The deep link `shrinkgate ui` printed for the sweep's experiment."""
    printed = (tmp / "ui.log").read_text(errors="replace")
    found = re.search(rf"^\s*{re.escape(EXPERIMENT)} \(latest sweep's verdict\): (\S+)$", printed, re.MULTILINE)
    assert found, f"`shrinkgate ui` printed no link to the sweep's verdict:\n{printed[-2000:]}"
    return found.group(1)


def test_first_load_of_the_printed_link_shows_the_verdict(sweep, ui_server, page, record_property):
    """A reviewer opens the link `shrinkgate ui` printed, in a fresh browser profile, and configures nothing:
    the runs view (not the GenAI overview), every run with its metrics and frontier verdicts, the parent's
    description holding the verdict; then the parent run page renders that table and the Pareto plot."""
    tmp, _, _, exp_id, parent, children = sweep
    link = _printed_link(tmp)
    context = page.context.browser.new_context(viewport={"width": 1700, "height": 900})
    fresh = context.new_page()
    fresh.set_default_timeout(TIMEOUT_MS)
    try:
        fresh.goto(link, wait_until="domcontentloaded")
        for name in children:  # listed without expanding anything
            fresh.get_by_text(name, exact=True).first.wait_for()
        _close_assistant(fresh)
        fresh.wait_for_timeout(500)
        shot = _shot(fresh, tmp, "ui-first-load.png")
        record_property("screenshot", str(shot))
        print(f"first-load screenshot: {shot}")
        assert f"/experiments/{exp_id}/runs" in fresh.url and fresh.get_by_text("Traces 0").count() == 0

        rows = _grid_cells(fresh)
        assert parent.info.run_name in rows and set(children) <= set(rows), sorted(rows)
        for name, run in children.items():
            for metric in (M.MMLU_ACC, M.DECODE_TOK_S, M.WEIGHT_BYTES):
                assert float(_cell(rows[name], metric)) == pytest.approx(run.data.metrics[metric], rel=1e-6), (
                    name,
                    metric,
                )
            for tag in ("frontier.decode_tok_s", "frontier.weight_bytes"):
                assert _cell(rows[name], tag) == run.data.tags[tag], (name, tag)
        # the parent's description opens with the decision in one sentence; each child's is its own verdict line
        assert _cell(rows[parent.info.run_name], "Description").startswith("**Verdict** under the default policy")
        for name, run in children.items():
            assert _cell(rows[name], "Description").startswith(run.data.tags[M.TAG_DESCRIPTION][:20]), name
            assert _cell(rows[name], M.TAG_VERDICT) == run.data.tags[M.TAG_VERDICT] != "", name

        fresh.goto(
            f"{link.split('#')[0]}#/experiments/{exp_id}/runs/{parent.info.run_id}?workflowType=machine_learning",
            wait_until="domcontentloaded",
        )
        fresh.get_by_text("shrinkgate verdict", exact=True).first.wait_for()
        _close_assistant(fresh)
        more = fresh.get_by_text("Show more", exact=True)
        if more.count():
            more.first.click()
        for name in children:
            fresh.locator("table td", has_text=re.compile(rf"^{re.escape(name)}$")).first.wait_for()
        fresh.wait_for_function(
            "() => Array.from(document.images).some(i => i.complete && i.naturalWidth > 400 && i.src.includes('get-artifact?path=report%2Fpareto_'))"
        )
        fresh.wait_for_timeout(300)
        shot = _shot(fresh, tmp, "ui-parent-description.png")
        record_property("screenshot_description", str(shot))
        print(f"parent description screenshot: {shot}")
    finally:
        context.close()


def test_runs_table_lists_parent_children_metrics_and_verdicts(sweep, ui_server, page):
    tmp, _, _, exp_id, parent, children = sweep
    url, _ = ui_server
    page.goto(f"{url}/#/experiments/{exp_id}/runs", wait_until="domcontentloaded")
    parent_link = page.locator(f'a[href*="/runs/{parent.info.run_id}"]').first
    parent_link.wait_for()
    _close_assistant(page)
    _toggle_columns(page, METRIC_COLUMNS + TAG_COLUMNS, want=True)
    _toggle_columns(page, HIDDEN_COLUMNS, want=False)

    # children are listed under their parent, collapsed until its expander is clicked
    for name in children:
        if not page.get_by_text(name, exact=True).count():
            page.locator('[role=gridcell][col-id="attributes.`Run Name`"]', has=parent_link).locator(
                "button"
            ).first.click()
            break
    for name in children:
        page.get_by_text(name, exact=True).first.wait_for()
    page.wait_for_timeout(500)
    shot = _shot(page, tmp, "ui-screenshot.png")
    assert shot.stat().st_size > 10_000

    rows = _grid_cells(page)
    assert parent.info.run_name in rows and set(children) <= set(rows), sorted(rows)
    for name, run in children.items():
        row = rows[name]
        for metric in (M.MMLU_ACC, M.DECODE_TOK_S):
            shown = _cell(row, metric)
            assert float(shown) == pytest.approx(run.data.metrics[metric], rel=1e-6), (name, metric, shown)
        assert _cell(row, "variant") == run.data.tags["variant"]
        assert _cell(row, "frontier.decode_tok_s") == run.data.tags["frontier.decode_tok_s"]
    verdicts = {name: _cell(rows[name], "frontier.decode_tok_s") for name in children}
    assert "frontier" in verdicts.values(), verdicts  # at least one variant is on the decode-speed frontier


def test_parent_artifacts_show_the_pareto_plot(sweep, ui_server, page):
    tmp, _, client, exp_id, parent, _ = sweep
    url, _ = ui_server
    pngs = sorted(a.path for a in client.list_artifacts(parent.info.run_id, "report") if a.path.endswith(".png"))
    assert pngs, "the report step logged no PNG on the parent run"
    target = f"report/pareto_{M.DECODE_TOK_S}.png" if f"report/pareto_{M.DECODE_TOK_S}.png" in pngs else pngs[0]
    page.goto(f"{url}/#/experiments/{exp_id}/runs/{parent.info.run_id}/artifacts", wait_until="domcontentloaded")
    page.get_by_text(M.ART_RECIPE, exact=True).first.wait_for()
    _close_assistant(page)
    page.get_by_text("report", exact=True).first.click()
    page.get_by_text(target.rsplit("/", 1)[1], exact=True).first.click()
    page.get_by_text(target, exact=True).first.wait_for()  # the preview's title
    page.wait_for_function(
        "() => Array.from(document.images).some(i => i.complete && i.naturalWidth > 400 && i.src.startsWith('blob:'))"
    )
    _shot(page, tmp, "ui-pareto-artifact.png")


def test_ui_stops_on_sigterm(ui_server):
    url, proc = ui_server
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    deadline = time.monotonic() + 10
    while _answers(f"{url}/health") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _answers(f"{url}/health"), "the MLflow server outlived `shrinkgate ui`"
