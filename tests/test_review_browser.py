"""The review pages in a real browser: Debian's chromium and chromium-driver through Selenium, against a real
`ranker serve` on 127.0.0.1 whose trainer process delivers the outbox to an aiosmtpd sink.

Nothing downloads a browser: Selenium is pointed at /usr/bin/chromium and /usr/bin/chromedriver (`.ci/run`
installs them with apt). One browser for the module; each test signs in afresh.
"""

from __future__ import annotations

import shutil
import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from triage_config import ADMIN_KEY, CONFIG, RANK_KEY, REVIEW_KEY, make_app

from ranker.harness import Server, free_port, wait_for
from ranker.triage import items
from ranker.triage.flagging import run_pass

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
pytestmark = pytest.mark.skipif(
    not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()) or shutil.which("chromium") is None,
    reason="Debian's chromium and chromium-driver are not installed",
)

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import WebDriverException  # noqa: E402
from selenium.webdriver.chrome.service import Service as DriverService  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.select import Select  # noqa: E402

# (industry, health, days to renewal): the pattern flags fintech accounts with health <= 50
ACCOUNTS = {
    "c1": ("fintech", 20, 20),
    "c2": ("fintech", 30, 35),
    "c3": ("fintech", 25, 50),
    "c4": ("fintech", 15, 65),
    "c5": ("retail", 90, 30),
}
NAMES = {"c1": "Acme <script>document.title='owned'</script>", "c2": "Globex", "c3": "Initech", "c4": "Umbrella"}


class Inbox:
    def __init__(self) -> None:
        self.messages: list = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's name)
        self.messages.append(envelope.original_content)
        return "250 OK"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A flagged scenario served by a real `ranker serve` whose outbox goes to an SMTP sink."""
    data = tmp_path_factory.mktemp("review")
    inbox = Inbox()
    smtp = Controller(inbox, hostname="127.0.0.1", port=free_port())
    smtp.start()
    config = CONFIG + (
        f'\n[outbox]\ndelivery = "smtp"\nfrom_address = "cs@vendor.example"\nsmtp_host = "127.0.0.1"\n'
        f"smtp_port = {smtp.port}\ninterval = 0.3\n"
    )
    app = make_app(data, config)
    service = app.extensions["ranker"]
    now = datetime.now(UTC)
    for account, (industry, health, days) in ACCOUNTS.items():
        attributes = {
            "name": NAMES.get(account, account),
            "industry": industry,
            "health": health,
            "segment": "enterprise" if health < 25 else "mid-market",
            "contact": {"email": f"cs@{account}.example"},
            "contract": {"renewalDate": (now + timedelta(days=days)).date().isoformat(), "value": 1000 * health},
        }
        service.signals.put("account", account, attributes, now - timedelta(days=30))
    assert run_pass(service, now)["flagged"] == 4
    server = Server(data, config, workers=2)  # a session and its forms work in whichever worker answers
    yield server, service, inbox
    server.stop()
    smtp.stop()


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,800",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=DriverService(executable_path=CHROMEDRIVER))
    driver.implicitly_wait(5)  # a page after a click may still be loading
    yield driver
    driver.quit()


def sign_in(driver, server: Server, key: str = REVIEW_KEY) -> None:
    driver.get(server.url + "/review/sign-in")
    driver.delete_all_cookies()  # (those of the page's site)
    driver.get(server.url + "/review/sign-in")
    driver.find_element(By.ID, "key").send_keys(key)
    driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()


def by_account(service) -> dict[str, dict]:
    return {i["account"]: i for i in items.list_items(service.store, top=500)["items"]}


def heading(driver, text: str) -> bool:
    """Whether the page's heading comes to hold ``text`` (after a navigation)."""

    def holds() -> bool:
        try:
            return text in driver.find_element(By.TAG_NAME, "h1").text
        except WebDriverException:  # the page changed under it (a stale element, or chromedriver's "Node with
            # given id does not belong to the document"), or has no heading yet: look again
            return False

    return wait_for(holds, 10)


def session_id(driver) -> str | None:
    cookie = driver.get_cookie("ranker_review_session")
    return cookie["value"] if cookie else None


class Attacker(BaseHTTPRequestHandler):
    """Another site's page that posts a decision to ranker with the visitor's cookie, without the token."""

    def do_GET(self):  # noqa: N802 (http.server's name)
        page = (
            f'<form id="f" method="post" action="{self.server.target}"><input name="action" value="approve"></form>'
            "<script>document.getElementById('f').submit()</script>"
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)

    def log_message(self, *args):
        pass


def test_a_reviewer_decides_items_and_the_outbox_delivers_them(site, browser):
    server, service, inbox = site
    found = by_account(service)
    sign_in(browser, server)
    assert heading(browser, "Renewal risks") and browser.find_element(By.ID, "waiting").text == "4"
    assert browser.title == "Queue · ranker"
    assert NAMES["c1"] in browser.find_element(By.CSS_SELECTOR, "table.queue").text

    # approve the first as drafted: the next item opens
    browser.find_element(By.LINK_TEXT, NAMES["c1"]).click()
    assert heading(browser, NAMES["c1"]) and browser.title == f"{NAMES['c1']} · ranker"  # its script stayed text
    assert browser.find_elements(By.CSS_SELECTOR, "svg.chart")  # the evidence's chart, drawn by the server
    browser.find_element(By.ID, "approve").click()
    assert heading(browser, "Globex")
    assert f"Item {found['c1']['id']} approved" in browser.find_element(By.CSS_SELECTOR, ".notice").text

    # edit the second and approve with the edits
    body = browser.find_element(By.ID, "body")
    body.send_keys(Keys.END, "\nI will call you on Tuesday.")
    browser.find_element(By.ID, "approve-edited").click()
    assert heading(browser, "Initech")

    # dismiss the third: internal merger
    Select(browser.find_element(By.ID, "reason")).select_by_value("internal-merger")
    browser.find_element(By.ID, "reason-text").send_keys("merging with Hooli")
    browser.find_element(By.ID, "dismiss").click()
    assert heading(browser, "Umbrella")

    # another site's form, posted with this browser's cookie but without the token, is refused
    attacker = ThreadingHTTPServer(("127.0.0.1", 0), Attacker)
    attacker.target = f"{server.url}/review/items/{found['c4']['id']}/approve"
    threading.Thread(target=attacker.serve_forever, daemon=True).start()
    try:
        browser.get(f"http://127.0.0.1:{attacker.server_address[1]}/")
        assert wait_for(lambda: "InvalidCsrfToken" in browser.page_source)
    finally:
        attacker.shutdown()
        attacker.server_close()
    assert by_account(service)["c4"]["state"] == "pending"

    # keyboard only: Tab to Approve, Enter
    browser.get(f"{server.url}/review/items/{found['c4']['id']}")
    assert heading(browser, "Umbrella")
    keys = ActionChains(browser)
    for _ in range(80):  # from the top of the page, Tab until Approve has the focus
        if browser.switch_to.active_element.get_attribute("id") == "approve":
            break
        keys.send_keys(Keys.TAB).perform()
    assert browser.switch_to.active_element.get_attribute("id") == "approve"
    keys.send_keys(Keys.ENTER).perform()
    assert wait_for(lambda: "Nothing is waiting" in browser.page_source)

    # what the decisions wrote
    after = by_account(service)
    assert [after[a]["state"] for a in ("c1", "c2", "c3", "c4")] == ["approved", "approved", "dismissed", "approved"]
    assert after["c2"]["final_body"].endswith("I will call you on Tuesday.")
    with sqlite3.connect(service.settings.database_path) as conn:
        for account, reward in (("c1", 1.0), ("c2", 0.5), ("c3", 0.0), ("c4", 1.0)):
            activated, value = conn.execute(
                "SELECT d.activated_at, r.value FROM decisions d JOIN rewards r ON r.decision_id = d.id "
                "WHERE d.event_id = ?",
                (after[account]["event_id"],),
            ).fetchone()
            assert activated is not None and value == reward, account
        assert conn.execute("SELECT account FROM triage_suppressions").fetchall() == [("c3",)]
        keys = {row[0] for row in conn.execute("SELECT key FROM outbox")}
        assert keys == {f"triage:{after[a]['id']}" for a in ("c1", "c2", "c4")}

    # the trainer process delivers the three approved emails, once each
    assert wait_for(lambda: len(inbox.messages) == 3), inbox.messages
    with sqlite3.connect(service.settings.database_path) as conn:
        assert wait_for(lambda: conn.execute("SELECT count(*) FROM outbox WHERE state = 'sent'").fetchone()[0] == 3)
    assert any(b"I will call you on Tuesday." in m for m in inbox.messages)

    # sign out: the queue is refused
    browser.find_element(By.CSS_SELECTOR, "form.signout button").click()
    assert heading(browser, "Sign in")
    browser.get(server.url + "/review/")
    assert browser.current_url.startswith(server.url + "/review/sign-in")
    assert not browser.find_elements(By.ID, "waiting")


def test_a_rank_key_cannot_sign_in_and_signing_in_makes_a_new_session_id(site, browser):
    server, _, _ = site
    sign_in(browser, server, RANK_KEY)
    assert wait_for(lambda: "review or admin key" in browser.page_source)
    assert session_id(browser) is None
    browser.add_cookie({"name": "ranker_review_session", "value": "planted", "path": "/review"})
    browser.find_element(By.ID, "key").send_keys(ADMIN_KEY)
    browser.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    assert heading(browser, "Renewal risks")
    assert session_id(browser) not in (None, "planted")
    first = session_id(browser)
    browser.get(server.url + "/review/sign-in")  # signing in again, cookies kept
    browser.find_element(By.ID, "key").send_keys(REVIEW_KEY)
    browser.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    assert heading(browser, "Renewal risks")
    assert session_id(browser) not in (None, first)


def test_the_pages_read_at_1280_and_at_390_pixels_wide(site, browser):
    server, service, _ = site
    sign_in(browser, server)
    item = by_account(service)["c1"]["id"]
    try:
        for width, height in ((1280, 800), (390, 844)):
            browser.set_window_size(width, height)
            for path in ("/review/", f"/review/items/{item}", "/review/loops/cs-next-best-action", "/review/outbox"):
                browser.get(server.url + path)
                inner = browser.execute_script("return window.innerWidth")
                scroll = browser.execute_script("return document.documentElement.scrollWidth")
                assert scroll <= inner, (width, path, scroll, inner)
    finally:
        browser.set_window_size(1280, 800)


DOCS = Path(__file__).resolve().parent.parent / "docs"


@pytest.mark.slow
def test_screenshots_of_the_demo(tmp_path, browser):
    """`ranker demo renewal-triage`'s data, served, signed in with its printed key: the screenshots in docs/
    (docs/review-queue.png, docs/review-item.png, docs/review-phone.png) are taken here."""
    import os
    import re
    import subprocess
    import sys

    data = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RANKER_")}
    demo = subprocess.run(
        [sys.executable, "-m", "ranker", "demo", "renewal-triage", "--data-dir", str(data)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert demo.returncode == 0, demo.stderr
    key = re.search(r"review:\s+(\S+)", demo.stdout).group(1)
    with Server(data, (data / "ranker.toml").read_text(), workers=1) as server:
        sign_in(browser, server, key)
        assert heading(browser, "Renewal risks") and int(browser.find_element(By.ID, "waiting").text) > 0
        value = browser.find_element(By.CSS_SELECTOR, "table.queue td[data-label=Value]").text
        assert re.fullmatch(r"[\d,]+", value), value  # the accounts' contract values reach the queue
        browser.set_window_size(1280, 800)
        browser.save_screenshot(str(DOCS / "review-queue.png"))
        browser.get(browser.find_element(By.CSS_SELECTOR, "table.queue a").get_attribute("href"))
        assert browser.find_element(By.ID, "approve")
        captions = [f.text for f in browser.find_elements(By.CSS_SELECTOR, "figure.chart figcaption")]
        assert captions[0].startswith("reporting_api_calls_30d") and any("sentiment" in c for c in captions)
        height = browser.execute_script("return document.documentElement.scrollHeight")
        browser.set_window_size(1280, min(height, 1500))
        browser.save_screenshot(str(DOCS / "review-item.png"))
        browser.set_window_size(390, 844)
        browser.save_screenshot(str(DOCS / "review-phone.png"))
        browser.set_window_size(1280, 800)
        # a new user decides: the approved email waits in the outbox for copying (the demo sets no delivery)
        subject = browser.find_element(By.ID, "subject").get_attribute("value")
        browser.find_element(By.ID, "approve").click()
        assert wait_for(lambda: "approved. Here is the next one." in browser.page_source)
        browser.get(server.url + "/review/outbox")
        assert "No delivery is set" in browser.page_source and subject in browser.find_element(By.TAG_NAME, "h2").text
