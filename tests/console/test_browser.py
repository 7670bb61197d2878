"""The console in a real headless Chromium (Debian's chromium and chromedriver, through Selenium).

One policyd (console = edit) and one browser serve the whole module. Screenshots are written to
$POLICYD_TEST_ARTIFACTS/console/, by default artifacts/console/ in the checkout (git-ignored;
.ci/run points it at the clone CI keeps). Selenium is given the driver's path, so Selenium
Manager never runs (and SE_OFFLINE forbids it to download anything if it did).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.console.support import TOKEN, copy_policy, token_file
from tests.support import ROOT, SHIPPED_POLICIES, PolicydProcess, fixture

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
ARTIFACTS = Path(os.environ.get("POLICYD_TEST_ARTIFACTS") or ROOT / "artifacts") / "console"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",  # as root, Chromium's sandbox cannot start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)
PAGES = ("", "decisions", "playground", "policy", "state")
WAIT_S = 10.0

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="no browser: the console's browser tests need Debian's chromium and chromium-driver "
    "(apt-get install chromium chromium-driver; .ci/run installs them)",
)

if CHROMIUM is not None and CHROMEDRIVER is not None:
    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.remote.webelement import WebElement
    from selenium.webdriver.support.ui import Select, WebDriverWait


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_policy(tmp_path_factory.mktemp("console") / "policies")


@pytest.fixture(scope="module")
def server(policy_dir: Path) -> Iterator[PolicydProcess]:
    tokens = token_file(policy_dir.parent)
    process = PolicydProcess(
        policy_dir,
        policy_dir.parent / "policyd.log",
        "--console",
        "edit",
        "--console-token-file",
        str(tokens),
        "--reload-debounce-s",
        "0.05",
        # A shadow that agrees until a test edits the main policy: rows come with their lines.
        "--shadow-policies",
        str(copy_policy(policy_dir.parent / "candidate")),
    )
    try:
        yield process.wait_ready()
    finally:
        process.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    assert CHROMIUM is not None and CHROMEDRIVER is not None
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager, were it ever asked, may not download
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="policyd-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument("--window-size=1280,800")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT_S)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


class Page:
    """The browser on one console page, with the waits and checks the tests share."""

    def __init__(self, driver: WebDriver, server: PolicydProcess) -> None:
        self.driver = driver
        self.server = server

    def open(self, path: str, *, width: int = 1280, height: int = 800) -> Page:
        self.driver.set_window_size(width, height)
        self.driver.get(f"{self.server.url}/ui/{path}")
        self.wait(lambda d: d.find_element(By.ID, "mode").text.strip() != "")
        return self

    def wait(self, condition: Callable[[Any], Any], timeout: float = WAIT_S) -> Any:
        try:
            waiting = WebDriverWait(
                self.driver,
                timeout,
                poll_frequency=0.05,
                ignored_exceptions=(StaleElementReferenceException,),
            )
            return waiting.until(condition)
        except TimeoutException:
            self.shot(f"timeout-{int(time.time() * 1000)}")
            main = self.driver.find_element(By.TAG_NAME, "main").text
            raise AssertionError(
                f"timed out after {timeout} s on {self.driver.current_url}:\n{main}"
            ) from None

    def text(self, element_id: str) -> str:
        return str(self.driver.find_element(By.ID, element_id).text)

    def wait_text(self, element_id: str, *wanted: str, timeout: float = WAIT_S) -> str:
        def has(driver: Any) -> str | bool:
            found = driver.find_elements(By.ID, element_id)
            text = found[0].text if found else ""
            return text if all(w in text for w in wanted) else False

        return str(self.wait(has, timeout))

    def editor(self, host_id: str) -> WebElement:
        """The CodeMirror content element inside the editor's shadow root."""
        host = self.driver.find_element(By.ID, host_id)
        return self.wait(lambda d: host.shadow_root.find_element(By.CSS_SELECTOR, ".cm-content"))  # type: ignore[no-any-return]

    def type_into(self, host_id: str, text: str) -> WebElement:
        content = self.editor(host_id)
        content.click()
        keys = ActionChains(self.driver).key_down(Keys.CONTROL).send_keys("a").key_up(Keys.CONTROL)
        keys.send_keys(Keys.DELETE).perform()
        self.wait(lambda d: content.text.strip() == "")
        content.send_keys(text)
        return content

    def editor_marks(self, host_id: str, severity: str = "error") -> list[WebElement]:
        host = self.driver.find_element(By.ID, host_id)
        return list(host.shadow_root.find_elements(By.CSS_SELECTOR, f".cm-lintRange-{severity}"))

    def errors(self, *expected: str) -> list[str]:
        """Console errors since the last call, except the HTTP refusals a test provoked."""
        entries = self.driver.get_log("browser")
        return [
            e["message"]
            for e in entries
            if e["level"] == "SEVERE" and not any(x in e["message"] for x in expected)
        ]

    def shot(self, name: str) -> None:
        self.driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


@pytest.fixture
def page(browser: WebDriver, server: PolicydProcess) -> Iterator[Page]:
    browser.get_log("browser")  # what an earlier test left
    yield Page(browser, server)


def test_every_page_loads_without_console_errors_at_desktop_and_phone_width(page: Page) -> None:
    for width, height in ((1280, 800), (390, 844)):
        for path in PAGES:
            page.open(path, width=width, height=height)
            time.sleep(0.3)  # the first poll of each page has come back
            name = path or "overview"
            page.shot(f"{name}-{width}")
            assert page.errors() == [], f"{name} at {width}px"
            layout = page.driver.execute_script(
                """
                const unlabelled = [...document.querySelectorAll('input, select, textarea')]
                  .filter((e) => !e.labels.length && !e.getAttribute('aria-label')).map((e) => e.id);
                return {
                  overflow: document.documentElement.scrollWidth - document.documentElement.clientWidth,
                  h1: document.querySelectorAll('h1').length,
                  nav: document.querySelectorAll('nav[aria-label] a[aria-current=page]').length,
                  unlabelled,
                };
                """
            )
            assert layout["overflow"] <= 0, f"{name} scrolls sideways at {width}px"
            assert layout["h1"] == 1 and layout["nav"] == 1, name
            assert layout["unlabelled"] == [], name
    page.open("")
    page.driver.find_element(By.TAG_NAME, "body").send_keys(Keys.TAB)
    focused = page.driver.switch_to.active_element
    assert focused.get_attribute("class") == "skip" and focused.text == "Skip to content"
    assert "stateful rules are not in use" in page.open("state").wait_text("state-off", "not in use").lower()


def test_a_request_shows_up_live_in_the_decisions_table(page: Page) -> None:
    page.open("decisions")
    page.wait_text("status", "shown")
    user = f"carol-{uuid.uuid4().hex[:8]}"
    login = fixture("Login-basic")
    login["content"]["user"] = user
    page.driver.execute_script("window.policydMark = 1")  # gone if the page were reloaded
    # The shipped policy knows no such user: refused, and shown.
    assert page.server.post(login).json() == {"reject": True, "reject_reason": "unknown user or bad token"}
    # The table polls every second: the row arrives in this same page, not after a reload (how
    # long the poll takes to come back depends on the machine, and is not asserted).
    row = page.wait(
        lambda d: next((r for r in d.find_elements(By.CSS_SELECTOR, "#rows tr") if user in r.text), False)
    )
    assert page.driver.execute_script("return window.policydMark") == 1
    assert "Login" in row.text and "reject" in row.text
    page.shot("decisions-live")
    assert page.errors() == []

    # The row opens in the playground with its request; the token stays masked, and the
    # playground asks for it because Login.rules reads it.
    row.find_element(By.CSS_SELECTOR, "a.open").click()
    secret = page.wait(lambda d: d.find_element(By.CSS_SELECTOR, "#secrets input[data-path='metas.token']"))
    assert "privilege_key" in page.text("secrets")  # masked too, and not read by a rule
    assert (
        '"***"' in page.editor("content-editor").text and "tk-alice" not in page.editor("content-editor").text
    )
    page.driver.find_element(By.ID, "run").click()
    page.wait_text("outcome", "reject", "unknown user or bad token")
    assert "Still masked" in page.text("result")
    # alice's token does not make this (unknown) user anybody: the secret is used, and refused.
    secret.send_keys("tk-alice")
    page.driver.find_element(By.ID, "run").click()
    page.wait(lambda d: "Still masked" not in page.text("result"))
    assert page.driver.find_element(By.ID, "outcome").get_attribute("data-outcome") == "reject"
    page.shot("playground-from-decision")
    assert page.errors() == []


def test_the_playground_shows_a_reject_and_the_deciding_rule(page: Page, policy_dir: Path) -> None:
    page.open("playground")
    Select(page.driver.find_element(By.ID, "example")).select_by_value("policyd:NewProxy-tcp")
    page.wait(lambda d: "NewProxy.rules" in d.find_element(By.ID, "rule-file").text)
    page.wait(lambda d: "remote_port" in page.editor("rules-editor").text)
    rules = page.type_into("rules-editor", 'reject "no tcp for {user.user}" when content.proxy_type == "tcp"')
    rules.send_keys(Keys.CONTROL, Keys.ENTER)  # the keyboard way to evaluate
    outcome = page.wait_text("outcome", "reject", "by NewProxy.rules:1:1", "no tcp for alice")
    assert outcome.startswith("reject")
    assert page.text("answer") == '{"reject":true,"reject_reason":"no tcp for alice"}'
    page.shot("playground-reject")

    page.type_into("rules-editor", 'reject "x" when content.remote_prot > 0')
    page.driver.find_element(By.ID, "run").click()
    page.wait_text("outcome", "does not load")
    assert "NewProxy.rules:1:25" in page.text("result") and "remote_port" in page.text("result")
    marks = page.wait(lambda d: page.editor_marks("rules-editor"))
    assert marks[0].text == "remote_prot"  # the error sits under the misspelled field
    page.shot("playground-error-in-editor")
    assert page.errors() == []
    assert (policy_dir / "NewProxy.rules").read_text() == (SHIPPED_POLICIES / "NewProxy.rules").read_text()


def test_a_broken_edit_on_disk_shows_on_the_overview_with_its_position(page: Page, policy_dir: Path) -> None:
    target = policy_dir / "NewUserConn.rules"
    good = target.read_text()
    target.write_text('allow when content.user.user == "root"\nreject "x" when content.remote_adr == "1"\n')
    try:
        page.open("")
        errors = page.wait_text("reload-errors", "NewUserConn.rules:2:25", "remote_adr")
        lines = errors.splitlines()
        assert 'reject "x" when content.remote_adr == "1"' in lines[1]
        assert lines[2].index("^") - lines[1].index("reject") == 24
        assert "Refused" in page.text("reload-result")
        page.shot("overview-reload-error")
    finally:
        target.write_text(good)
    page.wait_text("reload-result", "Loaded", timeout=WAIT_S)
    # The shadow policy's card, and the serving version linked to its files in the history.
    assert "same" in page.wait_text("shadow-counts", "same, ", "different")
    version = page.text("serving-version")
    link = page.driver.find_element(By.CSS_SELECTOR, "#serving-version a").get_attribute("href")
    assert link == f"{page.server.url}/versions/{version}"
    assert page.errors() == []


def test_edit_mode_refuses_a_broken_save_and_serves_a_good_one(page: Page, policy_dir: Path) -> None:
    target = policy_dir / "Ping.rules"
    before = target.read_bytes()
    carol = fixture("Ping-basic")
    carol["content"]["user"] = {"user": "carol", "metas": {}, "run_id": "r-carol"}
    unknown = {"reject": True, "reject_reason": "unknown user or bad token"}
    assert page.server.post(carol).json() == unknown

    page.open("policy")
    page.driver.find_element(By.ID, "token").send_keys(TOKEN, Keys.ENTER)
    page.wait_text("who", "Editing as alice")
    assert TOKEN not in page.driver.page_source
    page.driver.find_element(By.CSS_SELECTOR, "#file-list button[data-path='Ping.rules']").click()
    page.wait(lambda d: "banned" in page.editor("file-editor").text)

    page.type_into("file-editor", 'reject "x" when content.bogus')
    page.driver.find_element(By.ID, "save").click()
    page.wait_text("save-result", "would not load")
    assert "Ping.rules:1:25" in page.text("outcome")
    assert page.editor_marks("file-editor")
    assert target.read_bytes() == before
    page.shot("policy-save-refused")

    good = 'reject "no pings for {user.user}" when user.user == "carol"\n' + before.decode().rstrip("\n")
    page.type_into("file-editor", good)
    page.driver.find_element(By.ID, "save").click()
    page.wait_text("save-result", "Saved and serving")
    assert target.read_text().rstrip("\n") == good
    answer = page.server.post(carol).json()
    assert answer == {"reject": True, "reject_reason": "no pings for carol"}
    assert "console save by alice: Ping.rules" in page.server.logs()
    page.shot("policy-saved")
    assert page.errors("status of 422") == []
    assert TOKEN not in page.server.logs()
    assert httpx.get(f"{page.server.url}/ui/api/overview").json()["reloads"]["last_attempt"]["ok"] is True


# Prepended to the shipped NewProxy.rules by the test below: the policy starts keeping state.
QUOTA = 'reject "{user.user} already has {len(proxies(user.user))} proxy" when len(proxies(user.user)) >= 1\n'


def test_the_live_state_page_and_the_playground_follow_the_serving_policys_state(
    page: Page, policy_dir: Path
) -> None:
    """A hot reload that starts calling proxies() shows on the Live state page without a
    restart; a NewProxy allowed through HTTP is listed there, and the playground decides against
    it (nothing it evaluates is recorded); the reload that stops calling it shows too."""
    target = policy_dir / "NewProxy.rules"
    shipped = target.read_text()
    second = fixture("NewProxy-tcp")
    second["content"]["proxy_name"] = "alice.web"  # a second proxy of alice's, for the playground
    request_file = policy_dir / "tests" / "requests" / "NewProxy-second.json"
    overview = f"{page.server.url}/ui/api/overview"

    def state_in_use() -> bool:
        return httpx.get(overview).json()["state"] is True

    try:
        target.write_text(QUOTA + shipped)
        page.wait(lambda d: state_in_use())
        answer = page.server.post(fixture("NewProxy-tcp")).json()
        assert answer["reject"] is False and answer["content"]["metas"]["team"] == "red"

        page.open("state")
        state = page.wait_text("state", "Backend memory: healthy", "alice", "alice.ssh", "6022")
        assert "alice.web" not in state
        page.shot("state-live")

        request_file.write_text(json.dumps(second))
        page.open("playground")
        Select(page.driver.find_element(By.ID, "example")).select_by_value("policy:NewProxy-second")
        page.wait(lambda d: "proxies(user.user)" in page.editor("rules-editor").text)
        page.driver.find_element(By.ID, "run").click()
        refused = {"reject": True, "reject_reason": "alice already has 1 proxy"}
        page.wait_text("outcome", "reject", "by NewProxy.rules:1:1", refused["reject_reason"])
        assert "live state (memory backend)" in page.text("state-note")
        assert "nothing was counted or recorded" in page.text("state-note")
        page.shot("playground-live-state")
        live = httpx.get(f"{page.server.url}/state").json()["users"]["alice"]["proxies"]
        assert [p["name"] for p in live] == ["alice.ssh"]  # the playground registered nothing
        assert page.server.post(second).json() == refused  # the service decides as it showed
        assert page.errors() == []
    finally:
        target.write_text(shipped)
        request_file.unlink(missing_ok=True)
    page.wait(lambda d: not state_in_use())
    assert "not in use" in page.open("state").wait_text("state-off", "not in use")
