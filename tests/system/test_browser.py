"""serve.py's web page in a real browser: Debian's chromium, driven by Selenium, against a real
``serve.py`` process labelling a folder of captchas the test renders (keyboard labelling, the reader)."""
from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select, WebDriverWait

from conftest import REPO

import process_data

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SERVE = os.path.join(REPO, "serve.py")
CHECKPOINT = os.path.join(REPO, "pretrained", "warpctc.ckpt")       # the default model: digits
ALNUM = os.path.join(REPO, "pretrained", "warpctc_alnum.ckpt")       # a second one: digits + A-Z
COUNT = 6
WAIT = 30            # seconds one page step may take on 2 busy cores
SERVER_START = 240   # seconds for serve.py to load MindSpore and the model and answer /healthz
# Without the networking flags Chromium waits on services it cannot reach on a closed network.
CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1280,1000"]

# The page's labelling state in one call, so a wait sees one consistent snapshot.
STATE_JS = """
const input = document.getElementById('label-input');
return {
  busy: document.getElementById('label-section').dataset.busy === 'true',
  file: document.getElementById('label-file').textContent,
  value: input.value,
  focused: document.activeElement === input,
  selection: [input.selectionStart, input.selectionEnd],
  state: document.getElementById('label-state').textContent,
  progress: document.getElementById('label-progress').textContent,
  error: document.getElementById('label-error').textContent,
  done: !document.getElementById('label-done').hidden,
};
"""


@pytest.fixture(scope="module")
def captchas(tmp_path_factory):
    """A folder of COUNT digit captchas with names that do not give the text away, and each file's text."""
    root = tmp_path_factory.mktemp("browser")
    rendered = root / "rendered"
    names = process_data.render_split(str(rendered), COUNT, seed=11, split="test", workers=1, progress=False)
    folder = root / "to_label"
    folder.mkdir()
    truth = {}
    for number, name in enumerate(sorted(names)):
        shutil.copyfile(rendered / name, folder / f"captcha_{number}.png")
        truth[f"captcha_{number}.png"] = process_data.FILE_RE.match(name).group("label")
    return folder, truth


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serving(args, log_path):
    """Base URL of a ``serve.py`` process started with ``args`` on a free loopback port, once it answers
    /healthz; stopped on exit (its output goes to ``log_path``, quoted when it fails to start)."""
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=REPO)
    env.pop("WARPCTC_SERVE_TOKEN", None)  # a token only where a test gives one
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, SERVE, "--checkpoint_path", CHECKPOINT, *args,
                                 "--host", "127.0.0.1", "--port", str(port)],
                                cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START
        while True:
            if proc.poll() is not None:
                pytest.fail(f"serve.py exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=5) as answer:
                    if answer.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"serve.py did not answer /healthz within {SERVER_START} s: "
                            f"{log_path.read_text()[-2000:]}")
            time.sleep(0.5)
        while "--label_dir" in args:      # the model reads the folder in the background: wait for its readings
            with urllib.request.urlopen(url + "/label/status", timeout=5) as answer:
                if json.loads(answer.read())["reading_done"]:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"serve.py did not read the labelling folder within {SERVER_START} s")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)


@pytest.fixture(scope="module")
def server(captchas, tmp_path_factory):
    """Base URL of a ``serve.py`` with the digits model (the default) and the alphanumeric one, labelling
    the captcha folder, without a token; stopped after the module."""
    folder, _ = captchas
    args = ["--checkpoint_path", f"alnum={ALNUM}", "--label_dir", str(folder)]
    with serving(args, tmp_path_factory.mktemp("serve") / "serve.log") as url:
        yield url


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Debian chromium with a fresh profile, quit after the module."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(path)]
    if missing:
        # CI installs the browser and sets the variable, so there these tests cannot silently skip.
        message = f"{' and '.join(missing)} missing: apt-get install chromium chromium-driver"
        if os.environ.get("WARPCTC_REQUIRE_BROWSER") == "1":
            pytest.fail(message + " (WARPCTC_REQUIRE_BROWSER=1)", pytrace=False)
        pytest.skip(message + " to run the page's browser tests")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.set_page_load_timeout(WAIT)
        driver.set_script_timeout(WAIT)
        yield driver
    finally:
        driver.quit()


def read_labels(folder) -> tuple[dict, list]:
    """labels.tsv of ``folder``: ``{file: label}`` and the files marked unreadable, in file order."""
    labels, unreadable = {}, []
    path = folder / "labels.tsv"
    if not path.exists():
        return labels, unreadable
    for line in path.read_text(encoding="utf-8").splitlines():
        fields = line.split("\t")
        if fields[0] == "#unreadable":
            unreadable.append(fields[1])
        elif line.strip() and not line.startswith("#"):
            assert fields[0] not in labels, f"{fields[0]} is listed twice in labels.tsv"
            labels[fields[0]] = fields[1]
    return labels, unreadable


def page_state(driver) -> dict:
    """The labelling view as the user sees it (see STATE_JS)."""
    return driver.execute_script(STATE_JS)


def wait_for(driver, condition, what: str) -> dict:
    """The first page state for which ``condition(state)`` holds; fails naming ``what`` and the last state."""
    seen = {}

    def check(d):
        seen.update(page_state(d))
        return not seen["busy"] and condition(seen)

    try:
        WebDriverWait(driver, WAIT, poll_frequency=0.1).until(check)
    except TimeoutException:
        pytest.fail(f"the page did not show {what} within {WAIT} s; it shows {seen}")
    return dict(seen)


def label_input(driver):
    """The labelling view's text input."""
    return driver.find_element(By.ID, "label-input")


def type_label(driver, text: str, clear: bool = True) -> None:
    """Type ``text`` into the label input (emptied first when ``clear``) and press Enter."""
    field = label_input(driver)
    if clear:
        field.clear()
    field.send_keys(text + Keys.ENTER)


def open_page(driver, url: str) -> None:
    """Load the page and wait until it has asked the server what it needs (models, labelling)."""
    driver.get(url)
    WebDriverWait(driver, WAIT).until(lambda d: d.execute_script("return document.body.dataset.ready === 'true'"))


def test_labelling_by_keyboard(browser, server, captchas):
    folder, truth = captchas
    open_page(browser, server)
    first = wait_for(browser, lambda s: s["file"] in truth, "a captcha to label")
    assert first["progress"] == f"0 of {COUNT} labelled"
    # The model's reading is pre-filled and selected in the focused input, so typing replaces it.
    assert first["focused"] and first["selection"] == [0, len(first["value"])], first
    image = browser.find_element(By.ID, "label-image")
    shown = browser.execute_async_script(
        "const done = arguments[0];"
        "fetch(document.getElementById('label-image').src).then(r => r.arrayBuffer()).then(b => {"
        "  let s = ''; new Uint8Array(b).forEach(c => s += String.fromCharCode(c)); done(btoa(s)); });")
    assert base64.b64decode(shown) == (folder / first["file"]).read_bytes(), "the image shown is not the file named"
    assert image.size["width"] >= 3 * 160, f"the image is shown {image.size['width']} px wide, not scaled up"

    done = []
    state = first
    for count in (1, 2, 3):
        file = state["file"]
        type_label(browser, truth[file], clear=count > 1)
        done.append(file)
        state = wait_for(browser, lambda s: s["file"] in truth and s["file"] not in done,
                         f"the next captcha after {file}")
        assert state["progress"] == f"{count} of {COUNT} labelled"
    assert read_labels(folder) == ({f: truth[f] for f in done}, [])

    fourth = state["file"]
    before = (folder / "labels.tsv").read_bytes()
    # The alphabet is the default model's: 'A' is refused though the other model reads it.
    type_label(browser, "12A")
    state = wait_for(browser, lambda s: s["error"] != "", "why '12A' is refused")
    assert "'A' is not in the alphabet 0123456789" in state["error"]
    assert state["file"] == fourth and state["progress"] == f"3 of {COUNT} labelled"
    type_label(browser, "12345")
    state = wait_for(browser, lambda s: "12345" in s["error"], "why '12345' is refused")
    assert "at most 4" in state["error"]
    assert (folder / "labels.tsv").read_bytes() == before, "a refused label was written"

    # Back twice, forward once: each shows its saved label; Enter saves an edit and goes on.
    label_input(browser).send_keys(Keys.ARROW_UP)
    state = wait_for(browser, lambda s: s["file"] == done[2], f"the previous captcha {done[2]}")
    assert state["value"] == truth[done[2]] and truth[done[2]] in state["state"]
    label_input(browser).send_keys(Keys.PAGE_UP)
    state = wait_for(browser, lambda s: s["file"] == done[1], f"the captcha before, {done[1]}")
    assert state["value"] == truth[done[1]]
    label_input(browser).send_keys(Keys.ARROW_DOWN)
    wait_for(browser, lambda s: s["file"] == done[2], f"{done[2]} again")
    edited = "9" if truth[done[2]] != "9" else "8"
    type_label(browser, edited)
    state = wait_for(browser, lambda s: s["file"] == fourth, f"{fourth} after saving the edit")
    assert read_labels(folder) == ({done[0]: truth[done[0]], done[1]: truth[done[1]], done[2]: edited}, [])

    label_input(browser).send_keys(Keys.SHIFT, Keys.ENTER)
    state = wait_for(browser, lambda s: s["file"] not in done + [fourth], f"the captcha after unreadable {fourth}")
    assert state["progress"] == f"3 of {COUNT} labelled · 1 unreadable"
    assert read_labels(folder)[1] == [fourth]

    rest = [f for f in truth if f not in done + [fourth]]
    for _ in rest:
        file = state["file"]
        type_label(browser, truth[file])
        done.append(file)
        state = wait_for(browser, lambda s: s["done"] or s["file"] not in done, f"what comes after {file}")
    assert state["done"] and state["progress"] == f"{COUNT - 1} of {COUNT} labelled · 1 unreadable"
    assert browser.find_element(By.ID, "label-done").text == "All images are labelled"
    labels, unreadable = read_labels(folder)
    assert unreadable == [fourth]
    assert labels == {f: (edited if f == done[2] else truth[f]) for f in done}


def read_files(driver, paths) -> dict:
    """Pick ``paths`` through #file-input; the reader's rows once all are answered, by file name."""
    driver.find_element(By.ID, "file-input").send_keys("\n".join(str(path) for path in paths))

    def rows(d):
        found = d.execute_script(
            "return Array.from(document.querySelectorAll('#reader-results li')).map(li => ({"
            "  name: li.querySelector('.result-name').textContent, status: li.className,"
            "  reading: (li.querySelector('.reading') || {}).textContent,"
            "  line: li.querySelector('.result-line').textContent, model: li.dataset.model}));")
        return found if len(found) == len(paths) and all("pending" not in row["status"] for row in found) else None

    try:
        return {row["name"]: row for row in WebDriverWait(driver, WAIT * 2).until(rows)}
    except TimeoutException:
        pytest.fail(f"the reader did not answer {len(paths)} image(s) within {WAIT * 2} s")


def test_reader_reads_picked_files(browser, server, captchas, tmp_path):
    folder, truth = captchas
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"this is not a PNG")
    picked = sorted(truth)[:2]
    open_page(browser, server)
    results = read_files(browser, [folder / name for name in picked] + [broken])
    for name in picked:
        assert results[name]["reading"] == truth[name], results[name]
        assert results[name]["line"].startswith(truth[name] + " · "), results[name]
        assert 0.0 <= float(results[name]["line"].rsplit(" · ", 1)[1]) <= 1.0
        assert results[name]["model"] == "warpctc", results[name]
    # The server's refusal of the broken file is shown on its row, as text.
    assert "failed" in results[broken.name]["status"] and "broken.png" in results[broken.name]["line"], results
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text

    selector = Select(browser.find_element(By.ID, "model-select"))
    assert [option.text for option in selector.options] == ["warpctc", "alnum"]
    assert selector.first_selected_option.text == "warpctc"
    selector.select_by_visible_text("alnum")
    name = picked[0]
    browser.execute_script("document.getElementById('reader-results').replaceChildren()")
    result = read_files(browser, [folder / name])[name]
    assert result["model"] == "alnum" and result["reading"] == truth[name], result


def test_token_asked_once_and_kept(browser, captchas, tmp_path):
    folder, truth = captchas
    token = "correct-horse-battery"
    with serving(["--token", token], tmp_path / "serve.log") as url:
        browser.get(url)
        message = browser.find_element(By.ID, "token-message")
        WebDriverWait(browser, WAIT).until(lambda d: "needs a token" in message.text)
        browser.find_element(By.ID, "token-input").send_keys("wrong token" + Keys.ENTER)
        WebDriverWait(browser, WAIT).until(lambda d: "refused" in message.text)
        browser.find_element(By.ID, "token-input").send_keys(token + Keys.ENTER)
        WebDriverWait(browser, WAIT).until(lambda d: d.execute_script("return document.body.dataset.ready === 'true'"))
        assert not browser.find_element(By.ID, "token-section").is_displayed()
        assert not browser.find_element(By.ID, "page-error").is_displayed()
        assert not browser.find_element(By.ID, "label-section").is_displayed(), "labelling without --label_dir"
        assert not browser.find_element(By.ID, "model-choice").is_displayed(), "a model selector for one model"
        assert "0123456789" in browser.find_element(By.ID, "model-info").text
        name = sorted(truth)[0]
        assert read_files(browser, [folder / name])[name]["reading"] == truth[name]
        # The token is kept for the session: a reload does not ask again.
        open_page(browser, url)
        assert not browser.find_element(By.ID, "token-section").is_displayed()
        name = sorted(truth)[1]
        assert read_files(browser, [folder / name])[name]["reading"] == truth[name]
