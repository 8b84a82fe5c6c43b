"""The README's main job, seen as a person sees it: `wharf demo` runs, and the dashboard in a real
headless Chromium shows live sensor data and an alarm. The screenshot is kept under test-output/."""

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.infra, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "test-output"


def wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(url)


def test_demo_dashboard_in_a_real_browser(stack, unique, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    chromium, driver_bin = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver_bin, "scripts/setup.sh installs Debian's chromium and chromium-driver"
    web_port = stack.web_port + 7
    env = {**os.environ, "WHARF_APP_ID": f"wharf-test-demo-{unique}", "WHARF_WEB_PORT": str(web_port),
           "WHARF_STATE_DIR": str(stack.state_dir), "PYTHONUNBUFFERED": "1"}
    log = open(tmp_path / "demo.log", "wb")
    demo = subprocess.Popen([sys.executable, "-m", "wharf.cli", "demo", "--duration", "480", "--fault-every", "25", "--shop-rate", "15"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{web_port}/"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1400,1700",
                f"--user-data-dir={tmp_path / 'chrome'}"):
        options.add_argument(arg)
    browser = None
    try:
        wait_http(url + "stats", 120)
        browser = webdriver.Chrome(service=Service(driver_bin), options=options)
        browser.get(url)
        wait = WebDriverWait(browser, 300, poll_frequency=2)
        kpi = lambda label: int(browser.find_element(By.XPATH, f"//div[@class='kpi'][div[@class='l']='{label}']/div[@class='v']").text)  # noqa: E731
        wait.until(lambda b: kpi("readings / min") > 0)  # live sensor data reached ClickHouse and the page
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#temp canvas"))  # the per-zone chart is drawn
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#alarms .sev"))  # an alarm is shown
        # an alarm raised for an injected fault, and cleared after it (the detection-delay table)
        wait.until(lambda b: b.find_elements(By.XPATH, "//div[@id='delays']//td[starts-with(., 'after ')]"))
        wait.until(lambda b: b.find_elements(By.XPATH, "//div[@id='delays']//td[starts-with(., 'cleared ')]"))
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#recs td"))  # recommendation snapshots
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#sentiment canvas"))  # review sentiment per item
        OUTPUT.mkdir(exist_ok=True)
        time.sleep(3)
        browser.save_screenshot(str(OUTPUT / "dashboard.png"))
        assert (OUTPUT / "dashboard.png").stat().st_size > 20_000
        assert "refresh failed" not in browser.find_element(By.ID, "status").text
    finally:
        if browser is not None:
            browser.quit()
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGINT)  # Ctrl-C
            try:
                demo.wait(90)
            except subprocess.TimeoutExpired:
                os.killpg(demo.pid, signal.SIGKILL)
        log.close()
    assert demo.returncode == 0, (tmp_path / "demo.log").read_text()[-3000:]
    assert "stopped. State kept" in (tmp_path / "demo.log").read_text()
