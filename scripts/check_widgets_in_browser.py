"""Check in a real browser that the sliders of notebook 01 redraw its figure and AUROC readout.

The script serves a copy of ``notebooks/01_energy_change.ipynb`` with JupyterLab on localhost, opens
it in headless Chromium through Playwright, runs every cell, then moves the τ slider with the
keyboard. It saves a screenshot of the widget area before and after the move and exits non-zero when
the figure or the AUROC readout did not change.

Needs the ``browser`` extra (``pip install -e ".[browser]"``) and a Chromium binary (Debian:
``apt-get install chromium``). Run: ``python scripts/check_widgets_in_browser.py --out browser-check``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO_ROOT / "notebooks" / "01_energy_change.ipynb"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_server(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"JupyterLab did not respond at {url} within {timeout_s:.0f} s")


def start_jupyterlab(root: Path, port: int, token: str, log_path: Path) -> subprocess.Popen:
    subprocess.run(
        [sys.executable, "-m", "ipykernel", "install", "--sys-prefix", "--name", "python3"],
        check=True,
        capture_output=True,
    )
    command = [
        sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
        f"--ServerApp.root_dir={root}", f"--IdentityProvider.token={token}", "--ServerApp.disable_check_xsrf=True",
        "--allow-root", "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    log = log_path.open("w")
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=root)


def image_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_check(out: Path, chromium: str, timeout_s: float) -> dict:
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="dsenergy-browser-"))
    shutil.copy(NOTEBOOK, work / NOTEBOOK.name)
    port, token = free_port(), secrets.token_hex(16)
    server = start_jupyterlab(work, port, token, out / "jupyterlab.log")
    result: dict = {"notebook": NOTEBOOK.name, "port": port}
    try:
        wait_for_server(f"http://127.0.0.1:{port}/api?token={token}", 120)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1600, "height": 1400})
            page.goto(f"http://127.0.0.1:{port}/lab/tree/{NOTEBOOK.name}?token={token}")
            page.wait_for_selector(".jp-Notebook", timeout=120_000)
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator, .jp-Toolbar", timeout=60_000)
            time.sleep(3)

            # Run every cell through the menu, as a user would.
            page.click("text=Run", timeout=30_000)
            page.click("text=Run All Cells", timeout=30_000)

            slider = page.wait_for_selector(".widget-slider", timeout=timeout_s * 1000)
            figure = page.wait_for_selector(".js-plotly-plot", timeout=timeout_s * 1000)
            readout = page.wait_for_selector(".widget-html", timeout=60_000)
            # The widget output sits before later cells, so wait for the kernel to go idle.
            page.wait_for_function(
                "() => !document.querySelector('.jp-Notebook .jp-InputPrompt')?.textContent.includes('[*]')"
                " && ![...document.querySelectorAll('.jp-InputPrompt')].some(p => p.textContent.includes('*'))",
                timeout=timeout_s * 1000,
            )
            container = slider.evaluate_handle("node => node.closest('.jp-OutputArea-output')")
            container.scroll_into_view_if_needed()
            time.sleep(2)

            before_path = out / "widgets_before.png"
            container.as_element().screenshot(path=str(before_path))
            readout_before = readout.inner_text()
            figure_before = figure.evaluate("node => JSON.stringify(node.data.map(trace => trace.x || trace.y))")

            handle = page.query_selector(".widget-slider .noUi-handle, .widget-slider .ui-slider-handle")
            if handle is None:
                raise RuntimeError("no slider handle found in the widget area")
            handle.click()
            for _ in range(12):
                page.keyboard.press("ArrowRight")
                time.sleep(0.1)

            page.wait_for_function(
                "(previous) => document.querySelector('.widget-html').innerText !== previous",
                arg=readout_before,
                timeout=60_000,
            )
            time.sleep(3)
            after_path = out / "widgets_after.png"
            container.as_element().screenshot(path=str(after_path))
            readout_after = readout.inner_text()
            figure_after = figure.evaluate("node => JSON.stringify(node.data.map(trace => trace.x || trace.y))")
            page.screenshot(path=str(out / "page_after.png"), full_page=False)
            browser.close()

        result.update(
            readout_before=readout_before,
            readout_after=readout_after,
            readout_changed=readout_before != readout_after,
            figure_data_changed=figure_before != figure_after,
            screenshots_differ=image_digest(before_path) != image_digest(after_path),
            screenshots=[before_path.name, after_path.name, "page_after.png"],
        )
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(work, ignore_errors=True)
    (out / "browser_check.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="browser-check", help="folder for screenshots and the JSON result")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium", help="Chromium binary")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the notebook to run")
    args = parser.parse_args()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")

    result = run_check(Path(args.out), args.chromium, args.timeout)
    print(json.dumps(result, indent=2))
    passed = result["readout_changed"] and result["figure_data_changed"] and result["screenshots_differ"]
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
