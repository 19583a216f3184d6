"""The web console in a real browser (issue 19): Debian's Chromium, headless,
driven by Selenium through Debian's chromedriver (never a downloaded
browser), against a real ``aion-green worker --http`` process. As a person
uses it: sign in, filter the runs, open a run, send a signal and watch the
message and the next step arrive live, cancel a run, walk a supervision
tree, start a workflow, watch the engine's charts, open an id made of HTML,
use a narrow window, sign out.

Screenshots of the main views are saved in ``$AION_SCREENSHOTS`` (default:
the test's temporary directory; the path is printed). Without Chromium the
tests skip, unless ``AION_REQUIRE_BROWSER=1`` (``.ci/run`` sets it and
installs the packages), where they fail."""
import os
import shutil
from pathlib import Path

import pytest
from conftest import wait_until
from test_console import EVIL, TOKEN, Api, start_worker

pytestmark = pytest.mark.browser


def _browser_or_skip():
    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    try:
        import selenium  # noqa: F401
    except ImportError:
        binary = None
    if binary and driver:
        return binary, driver
    reason = ("needs Debian's chromium and chromium-driver (apt-get install chromium "
              "chromium-driver) and selenium")
    if os.environ.get("AION_REQUIRE_BROWSER") == "1":
        pytest.fail(f"AION_REQUIRE_BROWSER=1 but this machine lacks them: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def screens(tmp_path_factory):
    where = Path(os.environ.get("AION_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    where.mkdir(parents=True, exist_ok=True)
    print(f"\nconsole screenshots: {where}")
    return where


@pytest.fixture(scope="module")
def chrome():
    binary, driver_path = _browser_or_skip()
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager never downloads anything
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1280,900", "--no-first-run", "--disable-extensions"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    directory = tmp_path_factory.mktemp("console-browser")
    served = start_worker(directory, "--token", TOKEN)
    try:
        api = Api(served.port, TOKEN)
        api.post("/v1/workflows", {"workflow": "console.order", "args": [1], "id": "o-1"})
        api.post("/v1/workflows", {"workflow": "console.order", "args": [2], "id": "o-2"})
        api.post("/v1/workflows", {"workflow": "console.fails", "id": EVIL})
        api.post("/v1/workflows", {"workflow": "console.parent", "id": "p-1"})
        api.post("/v1/workflows", {"workflow": "console.many", "args": [450, 100], "id": "long"})
        for wid in ("b-1", "b-2"):
            api.post("/v1/workflows", {"workflow": "console.order", "args": [3], "id": wid})
        api.post("/v1/schedules", {"schedule_id": "hourly", "workflow": "console.kid",
                                   "args": [0], "every": 3600})
        # Running: o-1, o-2, b-1, b-2 and the schedule's own run.
        wait_until(lambda: api.get("/v1/workflows/count", status="running")["count"] == 5
                   and api.get("/v1/workflows/count", status="completed")["count"] >= 4,
                   what="the runs to settle")
        served.api = api
        served.base = f"http://127.0.0.1:{served.port}"
        yield served
    finally:
        served.stop()


def by_css(driver, selector):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, selector)


def all_css(driver, selector):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def wait_for(driver, check, what, timeout=20):
    """Poll ``check`` until true. An element that went stale or is not there
    yet (the page reloads itself when a run ends) is looked for again;
    chromedriver reports an element read while the page is being replaced
    as a plain WebDriverException ("Node with given id does not belong to
    the document"), which is the same race."""
    from selenium.common.exceptions import (
        NoSuchElementException,
        StaleElementReferenceException,
        WebDriverException,
    )
    from selenium.webdriver.support.ui import WebDriverWait

    def attempt(d):
        try:
            return check(d)
        except (StaleElementReferenceException, NoSuchElementException):
            raise
        except WebDriverException as exc:
            if "does not belong to the document" in str(exc):
                return False
            raise

    return WebDriverWait(driver, timeout, poll_frequency=0.1,
                         ignored_exceptions=(StaleElementReferenceException,
                                             NoSuchElementException)).until(
        attempt, message=f"waited {timeout} s for {what}")


def accept_confirm(driver):
    from selenium.webdriver.support import expected_conditions

    wait_for(driver, expected_conditions.alert_is_present(), "the confirmation")
    driver.switch_to.alert.accept()


def no_alert(driver):
    from selenium.common.exceptions import NoAlertPresentException

    try:
        text = driver.switch_to.alert.text
    except NoAlertPresentException:
        return True
    raise AssertionError(f"an alert opened: {text!r} (a value ran as script)")


def listed(driver):
    return [box.get_attribute("value") for box in all_css(driver, 'input[name="sel"]')]


def errors_logged(driver):
    return [entry["message"] for entry in driver.get_log("browser")
            if entry["level"] == "SEVERE" and "favicon.ico" not in entry["message"]]


def test_a_person_signs_in_filters_opens_a_run_and_watches_it_live(chrome, worker, screens):
    driver = chrome
    driver.get(f"{worker.base}/ui/runs")
    # Signed out: the sign-in form, which goes back to the runs after.
    assert "/ui/login" in driver.current_url
    by_css(driver, "#token").send_keys(TOKEN)
    by_css(driver, "#signin").click()
    wait_for(driver, lambda d: d.current_url.endswith("/ui/runs"), "the runs list")
    assert set(listed(driver)) >= {"o-1", "o-2", "p-1", EVIL}
    driver.save_screenshot(str(screens / "runs.png"))
    # Filter: the URL keeps it, and the back button returns to the whole list.
    by_css(driver, 'input[name="prefix"]').send_keys("o-")
    by_css(driver, '#filters button[type="submit"]').click()
    wait_for(driver, lambda d: "prefix=o-" in d.current_url, "the filtered URL")
    assert listed(driver) == ["o-1", "o-2"]
    by_css(driver, 'a[data-count="running"]').click()
    wait_for(driver, lambda d: "status=running" in d.current_url, "the status filter")
    assert listed(driver) == ["o-1", "o-2"] and "prefix=o-" in driver.current_url
    driver.back()
    wait_for(driver, lambda d: "status=running" not in d.current_url, "going back")
    assert listed(driver) == ["o-1", "o-2"]
    # Open o-1 and send it "go": the message and the step after it appear live.
    by_css(driver, 'a.run-link[href*="id=o-1"]').click()
    wait_for(driver, lambda d: by_css(d, "#workflow-id").text == "o-1", "o-1's page")
    assert by_css(driver, ".summary .badge").get_attribute("data-status") == "running"
    driver.save_screenshot(str(screens / "run.png"))
    form = by_css(driver, "#act-signal")
    form.find_element("css selector", 'input[name="name"]').send_keys("go")
    payload = form.find_element("css selector", 'textarea[name="payload"]')
    payload.clear()
    payload.send_keys('{"ok": "<i>yes</i>"}')
    form.find_element("css selector", "button").click()
    accept_confirm(driver)
    wait_for(driver, lambda d: all_css(d, '#timeline tr[data-type="MessageReceived"]'),
             "the message to appear live")
    row = by_css(driver, '#timeline tr[data-type="MessageReceived"]')
    assert '"<i>yes</i>"' in row.text  # a payload shows as text
    assert "fresh" in row.get_attribute("class")  # added by the stream, not by a reload
    # The step after it completes live (a row the stream adds, for half a
    # second before the page reloads at the run's end)...
    wait_for(driver, lambda d: all_css(d, '#timeline tr.fresh[data-type="StepCompleted"]'),
             "the step to complete live")
    # ...then the page shows the run completed.
    wait_for(driver, lambda d: by_css(d, ".summary .badge").get_attribute("data-status")
             == "completed", "o-1 to complete and the page to say so", timeout=30)
    kinds = [r.get_attribute("data-type") for r in all_css(driver, "#timeline tr")]
    assert kinds[:2] == ["WorkflowCompleted", "StepCompleted"] and "MessageReceived" in kinds
    assert '"got"' in by_css(driver, "#result").text
    assert not errors_logged(driver)


def test_a_query_answers_and_a_cancel_changes_the_status(chrome, worker, screens):
    driver = chrome
    driver.get(f"{worker.base}/ui/run?id=o-2")
    form = by_css(driver, "#act-query")
    form.find_element("css selector", 'input[name="name"]').send_keys("progress")
    form.find_element("css selector", "button").click()
    wait_for(driver, lambda d: "waiting for go" in form.find_element("css selector", "output").text,
             "the query's answer")
    # An action that fails shows the API's error.
    bad = by_css(driver, "#act-signal")
    bad.find_element("css selector", 'input[name="name"]').send_keys("go")
    text = bad.find_element("css selector", 'textarea[name="payload"]')
    text.clear()
    text.send_keys("{not json")
    bad.find_element("css selector", "button").click()
    wait_for(driver, lambda d: "not valid JSON" in bad.find_element("css selector", "output").text,
             "the payload's error")
    form = by_css(driver, "#act-cancel")
    form.find_element("css selector", 'input[name="reason"]').send_keys("from the browser test")
    form.find_element("css selector", "button").click()
    accept_confirm(driver)
    wait_for(driver, lambda d: by_css(d, ".summary .badge").get_attribute("data-status")
             == "cancelled", "o-2 to be cancelled", timeout=30)
    assert worker.api.get("/v1/workflows/o-2")["status"] == "cancelled"
    # Cancelling it again: the API's refusal, shown.
    driver.get(f"{worker.base}/ui/runs?status=cancelled")
    assert listed(driver) == ["o-2"]


def test_the_supervision_tree_and_an_id_made_of_html(chrome, worker, screens):
    driver = chrome
    driver.get(f"{worker.base}/ui/tree?id=p-1")
    nodes = all_css(driver, "#tree .node")
    assert [n.get_attribute("data-id") for n in nodes] == ["p-1", "p-1/kid-0", "p-1/kid-1",
                                                            "p-1/kid-2"]
    assert [n.get_attribute("data-status") for n in nodes] == ["completed", "completed", "failed",
                                                                "completed"]
    driver.save_screenshot(str(screens / "tree.png"))
    nodes[2].find_element("css selector", "a").click()
    wait_for(driver, lambda d: by_css(d, "#workflow-id").text == "p-1/kid-1", "the child's page")
    # An id holding a script shows as text and never runs.
    driver.get(f"{worker.base}/ui/runs")
    link = [a for a in all_css(driver, "a.run-link") if a.text == EVIL][0]
    link.click()
    wait_for(driver, lambda d: by_css(d, "#workflow-id").text == EVIL, "the HTML id's page")
    assert driver.title.startswith(f"Run {EVIL}")
    assert no_alert(driver)
    assert "no <b>luck</b>" in by_css(driver, "#error").text
    driver.save_screenshot(str(screens / "failed-run.png"))


def test_start_a_workflow_and_watch_the_engine(chrome, worker, screens):
    from selenium.webdriver.support.ui import Select

    driver = chrome
    driver.get(f"{worker.base}/ui/start")
    Select(by_css(driver, 'select[name="workflow"]')).select_by_visible_text("console.kid")
    by_css(driver, 'input[name="id"]').send_keys("k-started")
    args = by_css(driver, 'textarea[name="args"]')
    args.clear()
    args.send_keys("[7]")
    by_css(driver, "#act-start button").click()
    wait_for(driver, lambda d: "id=k-started" in d.current_url, "the new run's page")
    assert worker.api.get("/v1/workflows/k-started/result", timeout="20")["result"] == 7
    driver.get(f"{worker.base}/ui/engines")
    wait_for(driver, lambda d: all_css(d, '.chart[data-metric="aion_queue_depth"] svg polyline'),
             "the charts to draw")
    assert "writer" in by_css(driver, '.chart[data-metric="aion_queue_depth"]').text
    driver.save_screenshot(str(screens / "engines.png"))
    driver.get(f"{worker.base}/ui/triage")
    assert EVIL in by_css(driver, "#failed").text
    driver.save_screenshot(str(screens / "triage.png"))


def test_select_many_and_cancel_them_fork_a_run_and_pause_a_schedule(chrome, worker, screens):
    driver = chrome
    driver.get(f"{worker.base}/ui/runs?prefix=b-")
    assert listed(driver) == ["b-1", "b-2"]
    by_css(driver, "#select-all").click()
    by_css(driver, 'button[data-bulk="cancel"]').click()
    accept_confirm(driver)
    wait_for(driver, lambda d: all(worker.api.get(f"/v1/workflows/{w}")["status"] == "cancelled"
                                   for w in ("b-1", "b-2")), "both to be cancelled")
    wait_for(driver, lambda d: [b.get_attribute("data-status") for b in all_css(d, "#runs .badge")]
             == ["cancelled", "cancelled"], "the list to show them cancelled")
    # Fork p-1 from its second event: a new run, its page opened.
    driver.get(f"{worker.base}/ui/run?id=p-1")
    form = by_css(driver, "#act-fork")
    seq = form.find_element("css selector", 'input[name="from_seq"]')
    seq.send_keys("2")  # inside a child's life: refused, and the API's reason shown
    form.find_element("css selector", 'input[name="new_id"]').send_keys("p-1-fork")
    form.find_element("css selector", "button").click()
    accept_confirm(driver)
    wait_for(driver, lambda d: "a fork cannot share it" in form.find_element(
        "css selector", "output").text, "the refusal")
    assert "400 invalid_argument" in form.find_element("css selector", "output").text
    seq.clear()
    seq.send_keys("1")
    form.find_element("css selector", "button").click()
    accept_confirm(driver)
    wait_for(driver, lambda d: "id=p-1-fork" in d.current_url, "the fork's page")
    assert worker.api.get("/v1/workflows/p-1-fork/result", timeout="30")["result"] == [0, None, 2]
    # A schedule: pause it, and the page offers to resume it.
    driver.get(f"{worker.base}/ui/schedules")
    assert "every 1 h 0 min" in by_css(driver, "#schedules").text
    by_css(driver, "#sched-pause button").click()
    accept_confirm(driver)
    wait_for(driver, lambda d: worker.api.get("/v1/schedules/hourly")["paused"], "the pause")
    driver.get(f"{worker.base}/ui/schedules")
    assert all_css(driver, "#sched-resume") and "paused" in by_css(driver, "#schedules").text
    driver.save_screenshot(str(screens / "schedules.png"))


def test_a_long_history_pages_in_as_it_scrolls_and_filters_to_failures(chrome, worker, screens):
    driver = chrome
    head = worker.api.get("/v1/workflows/long")["head_seq"]
    driver.get(f"{worker.base}/ui/run?id=long")
    seqs = lambda d: [int(r.get_attribute("data-seq")) for r in all_css(d, "#timeline tr")]  # noqa: E731
    assert seqs(driver) == list(range(head, head - 100, -1))
    while all_css(driver, "#older"):
        count = len(seqs(driver))
        driver.execute_script("window.scrollTo(0, document.body.scrollHeight)")
        wait_for(driver, lambda d, seen=count: len(seqs(d)) > seen or not all_css(d, "#older"),
                 "the next older page")
    assert seqs(driver) == list(range(head, 0, -1))  # every event once, newest first
    by_css(driver, "#failures-only").click()
    wait_for(driver, lambda d: "only=failures" in d.current_url, "the failures")
    kinds = {r.get_attribute("data-type") for r in all_css(driver, "#timeline tr")}
    assert kinds == {"StepFailed"} and len(seqs(driver)) == 5


def test_a_narrow_window_and_signing_out(chrome, worker, screens):
    driver = chrome
    driver.set_window_size(420, 900)
    try:
        driver.get(f"{worker.base}/ui/runs")
        # The page does not scroll sideways; a wide table scrolls in its own box.
        assert driver.execute_script(
            "return document.documentElement.scrollWidth <= window.innerWidth + 1")
        driver.save_screenshot(str(screens / "runs-narrow.png"))
    finally:
        driver.set_window_size(1280, 900)
    by_css(driver, "#signout").click()
    wait_for(driver, lambda d: "/ui/login" in d.current_url, "the sign-in page")
    driver.get(f"{worker.base}/ui/runs")
    assert "/ui/login" in driver.current_url
