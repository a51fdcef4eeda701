"""The Prefect UI in a real browser: Debian's Chromium, driven by Playwright, starts a custom run of `training`.

`flows/prefect_local.sh start` (what `make prefect` runs) starts the server and the served deployments, here with
a throwaway PREFECT_HOME, run directory and work directory and a free loopback port, so a developer's own
server is never touched. The browser logs in with the auth string the script prints, opens Deployments ->
training -> Run -> Custom run, adds an override in the UI's own parameter form, submits, follows the run and
reads "Completed" on the flow run page. The Prefect API then shows that the run had exactly that parameter,
and the metrics it wrote show the override was applied (NDCG@7 exists only because of it).

Chromium is Debian's (`make setup` installs it: scripts/install_chromium.sh); Playwright drives it through
``executable_path`` and never downloads a browser. Where Chromium is not installed the test skips saying
why; under CI=true it fails instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.conftest import in_ci
from tests.flows.conftest import PROJECT_ROOT, write_params

CHROMIUM = Path(os.environ.get("RECFORGE_CHROMIUM", "/usr/bin/chromium"))
# the flag a root user needs in a container, and no traffic of Chromium's own (updates, sync, first-run pages)
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
OVERRIDE = "evaluate.ks=[1, 3, 7]"  # the custom parameter: K=3 and K=7 are in no default list
FINAL_STATES = ("Completed", "Failed", "Crashed", "Cancelled")
STATE_NAME = re.compile(
    r"^(Scheduled|Late|Pending|Running|Retrying|Paused|Cancelling|Completed|Failed|Crashed|Cancelled)$"
)
UI_TIMEOUT_MS = 30_000  # one page or element
RUN_TIMEOUT_S = 240  # the flow run on the tiny data: ~10 s on 2 idle cores


def chromium_missing() -> str | None:
    """Why Debian's Chromium cannot be driven here (None: it can)."""
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        return (
            f"Debian's Chromium is not installed ({CHROMIUM} missing): `make setup` installs it with "
            "`apt-get install chromium chromium-driver` (scripts/install_chromium.sh), which needs apt-get "
            "and root (or passwordless sudo)"
        )
    return None


@pytest.fixture
def chromium() -> Path:
    reason = chromium_missing()
    if reason is not None:
        if in_ci():
            pytest.fail(f"{reason}; CI=true, so this test fails instead of skipping", pytrace=False)
        pytest.skip(reason)
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:  # a pip package of the extras: missing means a stale venv, never a skip
        pytest.fail(f"playwright is not installed ({exc}): make setup installs it (pyproject.toml, extra dev)")
    return CHROMIUM


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _script(action: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(PROJECT_ROOT / "flows/prefect_local.sh"), action],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def local_prefect(tmp_path: Path):
    """`flows/prefect_local.sh start` on a free port, its state under tmp_path; yields (UI url, run dir, work dir)."""
    work, run, home = tmp_path / "work", tmp_path / "run", tmp_path / "home"
    for directory in (work, run, home):
        directory.mkdir()
    write_params(work)  # tiny synthetic data, two popularity models
    port = _free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
    env.update(
        VENV=str(Path(sys.executable).parent.parent),
        PREFECT_HOME=str(home),
        PREFECT_PORT=str(port),
        PREFECT_RUN_DIR=str(run),
        RECFORGE_WORK_DIR=str(work),
        PREFECT_RUNNER_POLL_FREQUENCY="2",  # the served process looks for new runs every 2 s, not 10
    )
    try:
        began = time.monotonic()
        started = _script("start", env, timeout=240)
        print(f"prefect_local.sh start: {time.monotonic() - began:.1f} s")
        assert started.returncode == 0, started.stdout + started.stderr + _logs(run)
        # the address the script tells the user to open
        ui_url = re.search(r"^Prefect UI:\s+(\S+)", started.stdout, re.MULTILINE)
        assert ui_url and ui_url.group(1) == f"http://127.0.0.1:{port}", started.stdout
        yield ui_url.group(1), run, work
    finally:
        stopped = _script("stop", env, timeout=120)
        for pid_file in run.glob("*.pid"):  # stop removes them; one left means a process it could not stop
            pid = int(pid_file.read_text())
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            pytest.fail(f"prefect_local.sh stop left {pid_file.name}: {stopped.stdout}{stopped.stderr}")


def _api_get(ui_url: str, auth: str, path: str) -> dict:
    import httpx

    user, _, password = auth.partition(":")
    response = httpx.get(f"{ui_url}/api{path}", auth=(user, password), timeout=10)
    response.raise_for_status()
    return response.json()


def test_custom_run_from_the_prefect_ui_completes(chromium: Path, local_prefect, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    ui_url, run_dir, work = local_prefect
    auth = (run_dir / "auth").read_text().strip()
    outside: list[str] = []  # requests the page tried to send off this machine (blocked)

    def loopback_only(route) -> None:
        host = urlparse(route.request.url).hostname
        if host in ("127.0.0.1", "localhost"):
            route.continue_()
        else:
            outside.append(host or route.request.url)
            route.abort()

    shot = tmp_path / "prefect-ui.png"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(UI_TIMEOUT_MS)
            page.route("**/*", loopback_only)
            try:
                page.goto(ui_url)
                # the login form asks for the whole auth string, as the script's start message says
                page.get_by_placeholder("admin:pass").fill(auth)
                page.get_by_role("button", name="Login").click()
                page.get_by_role("link", name="Deployments", exact=True).click()
                page.locator("a[href*='/deployments/deployment/']", has_text="training").first.click()
                page.get_by_role("button", name="Run", exact=True).click()
                page.get_by_role("menuitem", name="Custom run").click()
                # the UI's own parameter form: `overrides` is a list of strings; add one item
                overrides = (
                    page.locator("div", has=page.get_by_text("overrides (Optional)", exact=True))
                    .filter(has=page.get_by_role("button", name="Add item"))
                    .last
                )
                overrides.get_by_role("button", name="Add item").click()
                overrides.locator("textarea").fill(OVERRIDE)
                page.get_by_role("button", name="Submit").click()
                page.get_by_role("button", name="View run").click()
                page.wait_for_url("**/runs/flow-run/**")
                run_id = urlparse(page.url).path.rstrip("/").rsplit("/", 1)[-1]
                # the state badge in the run page's header (the page polls the run), read until a final state
                badge = page.locator("nav + div [data-slot=badge]").filter(has_text=STATE_NAME).first
                seen: list[tuple[float, str]] = []
                deadline = time.monotonic() + RUN_TIMEOUT_S
                while time.monotonic() < deadline:
                    state = badge.inner_text().strip()
                    if not seen or seen[-1][1] != state:
                        seen.append((round(time.monotonic() - deadline + RUN_TIMEOUT_S, 1), state))
                    if state in FINAL_STATES:
                        break
                    page.wait_for_timeout(500)
                assert seen[-1][1] == "Completed", f"UI states {seen} for flow run {run_id}\n{_logs(run_dir)}"
                # the UI's Parameters tab shows the override
                page.get_by_role("tab", name="Parameters").click()
                page.get_by_text(OVERRIDE).first.wait_for()
            finally:
                page.screenshot(path=str(shot), full_page=True)
                (tmp_path / "prefect-ui.html").write_text(page.content())
        finally:
            browser.close()

    # the Prefect API agrees: Completed, with exactly the parameters submitted in the form
    flow_run = _api_get(ui_url, auth, f"/flow_runs/{run_id}")
    assert flow_run["state"]["type"] == "COMPLETED", flow_run["state"]
    assert flow_run["parameters"] == {
        "params_file": "params.yaml",
        "overrides": [OVERRIDE],
        "package": False,
        "force": False,
    }
    deployment = _api_get(ui_url, auth, f"/deployments/{flow_run['deployment_id']}")
    assert deployment["name"] == "training"
    # the run used the override: metrics at K=3 and 7, in the work directory the served process runs in
    metrics = json.loads((work / "metrics/metrics.json").read_text())
    assert {"ndcg@3", "ndcg@7"} <= set(metrics["popularity"]), sorted(metrics["popularity"])
    assert "ndcg@5" not in metrics["popularity"]
    print(f"UI states {seen}; screenshot {shot}; blocked requests off this machine: {sorted(set(outside))}")


def _logs(run_dir: Path) -> str:
    return "".join(f"\n--- {log.name}\n{log.read_text()[-4000:]}" for log in sorted(run_dir.glob("*.log")))
