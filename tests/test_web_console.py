"""The web console at / in a real headless Chromium: create a notebook, run cells, see their output.

Needs Debian's `chromium` and `chromium-driver` (./dev.sh test installs them when run as root) and
selenium; without them the test is skipped and says why. A screenshot of the page after the run
is saved to tests/artifacts/web_console.png.
"""

import shutil
import time
from pathlib import Path

import pytest

from tests.conftest import wait_for

pytestmark = pytest.mark.timeout(120)

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                  "--window-size=1280,900")


@pytest.fixture
def browser(tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    from selenium.webdriver.chrome.service import Service

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.skip("headless Chromium is not installed: apt-get install chromium chromium-driver "
                    "(./dev.sh test does it when run as root)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()  # stops chromedriver and the browser it started


def test_a_cell_typed_in_the_browser_runs_and_its_output_streams_in(service, client, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 20, poll_frequency=0.05)
    page = browser.find_element
    before = {nb["id"] for nb in client.notebooks()}
    browser.get(service.api_url + "/")
    wait.until(lambda b: page(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
    page(By.ID, "new-notebook").click()
    wait.until(lambda b: page(By.ID, "state").get_attribute("data-state") == "idle")
    created = {nb["id"] for nb in client.notebooks()} - before
    assert len(created) == 1
    notebook = client.notebook(created.pop())
    try:
        code = page(By.ID, "code")

        def outputs() -> str:
            return "\n".join(e.text for e in browser.find_elements(By.CSS_SELECTOR, ".cell .outputs"))

        # output streams in while the cell runs (the page reads the SSE feed)
        code.send_keys("import time, math\nprint('hello from the browser', flush=True)\ntime.sleep(2)\n"
                       "print('done')\nmath.pi")
        code.send_keys(Keys.SHIFT, Keys.ENTER)
        wait.until(lambda b: "hello from the browser" in outputs())
        assert "done" not in outputs()
        assert page(By.ID, "state").get_attribute("data-state") == "busy"
        wait.until(lambda b: "3.141592653589793" in outputs())
        assert "done" in outputs()
        assert code.get_attribute("value") == ""

        # Tab completes from the notebook's namespace
        code.send_keys("math.sq")
        code.send_keys(Keys.TAB)
        wait.until(lambda b: code.get_attribute("value") == "math.sqrt")
        code.send_keys("(2)")
        code.send_keys(Keys.SHIFT, Keys.ENTER)
        wait.until(lambda b: "1.4142135623730951" in outputs())

        # HTML and PNG outputs render; an error shows its traceback
        browser.execute_script(
            "document.getElementById('code').value = arguments[0];",
            "import base64\n"
            "class Rich:\n"
            "    def _repr_html_(self):\n"
            "        return '<table id=\"rich\"><tr><td>rendered <b>html</b></td></tr></table>'\n"
            "display(Rich())\n"
            "class Dot:\n"
            "    def _repr_png_(self):\n"
            "        return base64.b64decode('iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQ"
            "DwAEhQGAhKmMIQAAAABJRU5ErkJggg==')\n"
            "display(Dot())\n"
            "def broken():\n"
            "    return undefined_name\n"
            "broken()")
        code.send_keys(Keys.SHIFT, Keys.ENTER)
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, ".output.error pre"))
        assert page(By.CSS_SELECTOR, "#rich b").text == "html"
        image = page(By.CSS_SELECTOR, ".output img")
        assert image.get_attribute("src").startswith("data:image/png;base64,")
        assert browser.execute_script("return arguments[0].naturalWidth", image) == 1
        traceback = page(By.CSS_SELECTOR, ".output.error pre").text
        assert "in broken" in traceback and "NameError: name 'undefined_name' is not defined" in traceback

        # the Interrupt button stops a running cell
        code.send_keys("time.sleep(60)")
        code.send_keys(Keys.SHIFT, Keys.ENTER)
        wait.until(lambda b: page(By.ID, "state").get_attribute("data-state") == "busy")
        time.sleep(0.3)
        page(By.ID, "interrupt").click()
        wait.until(lambda b: "KeyboardInterrupt" in outputs())
        wait.until(lambda b: page(By.ID, "state").get_attribute("data-state") == "idle")

        ARTIFACTS.mkdir(exist_ok=True)
        browser.execute_script("document.getElementById('cells').scrollTop = 0")
        browser.save_screenshot(str(ARTIFACTS / "web_console.png"))
        assert (ARTIFACTS / "web_console.png").stat().st_size > 10_000

        # Restart gives a fresh namespace
        page(By.ID, "restart").click()
        wait.until(lambda b: page(By.ID, "prompt").text == "In [1]:")
        wait_for(lambda: notebook.refresh()["worker"] is not None, 20, "the restarted notebook's worker")
        code.send_keys("'math' in dir()")
        code.send_keys(Keys.SHIFT, Keys.ENTER)
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, ".cell")[-1].get_attribute("data-status") == "ok")
        assert browser.find_elements(By.CSS_SELECTOR, ".cell")[-1].text == "In [1]:\n'math' in dir()\nFalse"
    except Exception:
        ARTIFACTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "web_console_failure.png"))
        raise
    finally:
        notebook.close()


def test_the_console_works_with_a_token_given_in_the_url_fragment(private_service, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    private_service.start_supervisor(pool=1)
    private_service.start_api(token="console-token")
    wait = WebDriverWait(browser, 20, poll_frequency=0.05)
    page = browser.find_element
    browser.get(private_service.api_url + "/#token=console-token")
    wait.until(lambda b: page(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
    assert "token" not in browser.current_url, "the token is taken out of the address bar"
    page(By.ID, "new-notebook").click()
    wait.until(lambda b: page(By.ID, "state").get_attribute("data-state") == "idle")
    code = page(By.ID, "code")
    code.send_keys("print('behind a token')")
    code.send_keys(Keys.SHIFT, Keys.ENTER)
    wait.until(lambda b: "behind a token" in " ".join(e.text for e in b.find_elements(By.CSS_SELECTOR,
                                                                                     ".cell .outputs")))
    page(By.ID, "delete").click()
