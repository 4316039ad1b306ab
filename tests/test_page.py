"""The page for people (GET /), in a real browser: headless Chromium (Debian's chromium + chromium-driver, which
.ci/run installs) driven by Selenium. The page is served by a small stub app defined here, which answers POST /
with canned answers computed from the request (code-point offsets of known strings in the context), so these
tests check the page alone. Set PAGE_SHOTS=<folder> to keep screenshots of the page (desktop and phone)."""

import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.fakes import TokenSpan, uvicorn_thread

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
if not (CHROMIUM and DRIVER) and not os.environ.get("CI"):
    pytest.skip("Debian's chromium and chromium-driver are not installed (CI installs them)", allow_module_level=True)

PAGE = Path(__file__).resolve().parents[1] / "toolkit" / "serving" / "static" / "page.html"
THRESHOLD = 0.43
WAIT_S = 15


@dataclass
class Canned:
    """What the stub answers to one question: the strings to find in the context (the answer first, then the
    alternatives, found with str.index: Python's code-point offsets, as the real server gives)."""

    targets: list[str]
    scores: list[float] = field(default_factory=lambda: [0.87, 0.06, 0.03, 0.02, 0.01])
    no_answer_probability: float = 0.08
    no_answer: bool | None = None  # the server's flag; None: no_answer_probability > the threshold
    calibrated: bool = True


class Stub:
    """POST / answers the canned questions as the server does (an object for top_k 1, else a list); every
    route but GET / wants "Authorization: Bearer <key>" when a key is set. `received` keeps each POST."""

    def __init__(self, key: str | None = None, adapters: tuple[str, ...] = ()):
        self.key, self.adapters = key, adapters
        self.canned: dict[str, Canned] = {}
        self.received: list[dict] = []

    def authorised(self, request) -> bool:
        return not self.key or request.headers.get("authorization") == f"Bearer {self.key}"

    def answers(self, question: str, context: str, top_k: int, adapter: str | None) -> dict | list[dict]:
        c = self.canned[question]
        spans = [(t, context.index(t)) for t in c.targets]
        p = c.no_answer_probability
        no = p > THRESHOLD if c.no_answer is None else c.no_answer
        best, start = spans[0]
        first = {"answer": "" if no else best, "score": p if no else c.scores[0], "start": 0 if no else start,
                 "end": 0 if no else start + len(best), "no_answer": no, "no_answer_probability": p,
                 "no_answer_threshold": THRESHOLD, "calibrated": c.calibrated, "best_span": best,
                 "best_span_start": start, "best_span_end": start + len(best), "start_confidence": 0.91,
                 "end_confidence": 0.88, "null_score_diff": -2.5, **({"adapter": adapter} if adapter else {})}
        others = [{"answer": t, "score": s, "start": i, "end": i + len(t), "start_confidence": 0.3,
                   "end_confidence": 0.2, "no_answer": False} for (t, i), s in zip(spans[1:], c.scores[1:])]
        return first if top_k == 1 else [first, *others[:top_k - 1]]

    def app(self):
        from fastapi import FastAPI, Request
        from fastapi.responses import HTMLResponse, JSONResponse

        app = FastAPI()
        unauthorised = {"error": "missing or wrong API key: send Authorization: Bearer <key>"}

        @app.get("/")
        async def page():
            return HTMLResponse(PAGE.read_text(encoding="utf-8"))

        @app.get("/adapters")
        async def adapters(request: Request):
            if not self.authorised(request):
                return JSONResponse(unauthorised, 401)
            names = list(self.adapters) or [None]
            return {"default": names[0], "adapters": [{"name": n, "no_answer_threshold": THRESHOLD} for n in names]}

        @app.post("/")
        async def answer(request: Request):
            body = await request.json()
            self.received.append({"body": body, "authorization": request.headers.get("authorization")})
            if not self.authorised(request):
                return JSONResponse(unauthorised, 401)
            inputs, parameters = body["inputs"], body.get("parameters", {})
            if not inputs["context"].strip():
                return JSONResponse({"error": "the context is empty"}, 422)
            if inputs["question"] not in self.canned:
                return JSONResponse({"error": f"stub: nothing canned for {inputs['question']!r}"}, 422)
            return self.answers(inputs["question"], inputs["context"], int(parameters.get("top_k", 1)),
                                parameters.get("adapter"))

        return app


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    screen(driver, 1200, 900)
    yield driver
    driver.quit()


def screen(browser, width: int, height: int, phone: bool = False) -> None:
    """The viewport of a desktop window, or of a phone (a mobile viewport: the page's viewport meta counts)."""
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": width, "height": height, "deviceScaleFactor": 2 if phone else 1, "mobile": phone})


def by_id(browser, id_: str):
    from selenium.webdriver.common.by import By

    return browser.find_element(By.ID, id_)


def fill(browser, id_: str, value: str) -> None:
    """Sets a field's value (chromedriver cannot type characters outside the BMP, such as emoji)."""
    browser.execute_script("arguments[0].value = arguments[1];"
                           "arguments[0].dispatchEvent(new Event('input', {bubbles: true}));", by_id(browser, id_), value)


def js(browser, script: str, *args):
    return browser.execute_script(script, *args)


def wait_answered(browser, stub: Stub, before: int) -> None:
    """Until the page has handled the POST that followed `before` requests."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, WAIT_S).until(
        lambda b: len(stub.received) > before and by_id(b, "ask").is_enabled()
        and "Answering" not in by_id(b, "status").text)


def ask(browser, stub: Stub, question: str, context: str, top_k: int = 1) -> None:
    from selenium.webdriver.support.ui import Select

    fill(browser, "context", context)
    fill(browser, "question", question)
    Select(by_id(browser, "top-k")).select_by_value(str(top_k))
    before = len(stub.received)
    by_id(browser, "ask").click()
    wait_answered(browser, stub, before)


def mark_text(browser) -> str:
    return js(browser, "const m = document.querySelector('#context-view mark'); return m && m.textContent;")


def view_text(browser) -> str:
    return js(browser, "return document.getElementById('context-view').textContent;")


def percents(text: str, pattern: str) -> float:
    found = re.search(pattern, text)
    assert found, (pattern, text)
    return float(found.group(1))


HIGHLIGHT_CASES = {  # context, answer: the emoji cases fail a UTF-16 slice; combining marks and ZWJ, grapheme splits
    "emoji": ("Menu 😀🍕🍔 of the day. The café was opened in 1990 by Maria Rossi, who still cooks.", "Maria Rossi"),
    "cjk": ("東京の🗼タワーは港区にあります。東京は日本の首都です。", "港区"),
    "combining": ("Cafe\u0301 with cre\u0300me bru\u0302le\u0301e, run by Jose\u0301 Nu\u0301n\u0303ez since 1999.",
                  "Jose\u0301 Nu\u0301n\u0303ez"),
    "after-emoji": ("👍🏽👨‍👩‍👧‍👦🇮🇹🏳️‍🌈 😀😀😀 🍕🍔🍟 The winner 🏆 was Zeno of Elea 🎉🎉.", "Zeno of Elea"),
}


@pytest.mark.parametrize("case", HIGHLIGHT_CASES)
def test_the_highlight_is_exactly_the_answer_given_in_code_points(browser, case):
    context, answer = HIGHLIGHT_CASES[case]
    stub = Stub()
    stub.canned["Who?"] = Canned([answer])
    with uvicorn_thread(stub.app()) as url:
        browser.get(url + "/")
        ask(browser, stub, "Who?", context)
        assert stub.received[-1]["body"]["inputs"] == {"question": "Who?", "context": context}
        assert mark_text(browser) == answer
        assert view_text(browser) == context  # nothing lost or doubled around the mark
        summary = by_id(browser, "summary").text
        assert summary.startswith(answer) and "87 % likely right" in summary


def test_the_page_is_public_and_posts_send_the_key(browser):
    import httpx
    from selenium.webdriver.common.keys import Keys

    stub = Stub(key="sekret")
    stub.canned["Who opened it?"] = Canned(["Maria Rossi"])
    context = HIGHLIGHT_CASES["emoji"][0]
    with uvicorn_thread(stub.app()) as url:
        assert httpx.get(url + "/").status_code == 200
        assert httpx.post(url + "/", json={"inputs": {"question": "Who opened it?", "context": context}}
                          ).status_code == 401
        browser.get(url + "/")
        ask(browser, stub, "Who opened it?", context)
        assert stub.received[-1]["authorization"] is None
        status = by_id(browser, "status").text
        assert "API key" in status and "enter it" in status
        assert js(browser, "return document.activeElement.id") == "key"
        assert not by_id(browser, "result").is_displayed()

        by_id(browser, "key").send_keys("wrong")
        before = len(stub.received)
        by_id(browser, "ask").click()
        wait_answered(browser, stub, before)
        assert stub.received[-1]["authorization"] == "Bearer wrong"
        assert "did not accept this API key" in by_id(browser, "status").text
        assert not by_id(browser, "result").is_displayed()

        by_id(browser, "key").clear()
        before = len(stub.received)
        by_id(browser, "key").send_keys("sekret" + Keys.ENTER)  # Enter in the key field asks too
        wait_answered(browser, stub, before)
        assert stub.received[-1]["authorization"] == "Bearer sekret"
        assert mark_text(browser) == "Maria Rossi"
        assert by_id(browser, "status").text == ""


def test_adapters_behind_the_key_are_listed_once_the_key_is_given(browser):
    from selenium.webdriver.support.ui import Select, WebDriverWait

    stub = Stub(key="sekret", adapters=("news", "legal"))
    stub.canned["Who opened it?"] = Canned(["Maria Rossi"])
    context = HIGHLIGHT_CASES["emoji"][0]
    with uvicorn_thread(stub.app()) as url:
        browser.get(url + "/")
        time.sleep(0.5)  # the page has asked GET /adapters and had a 401
        assert not by_id(browser, "adapter-field").is_displayed()
        by_id(browser, "key").send_keys("sekret")
        ask(browser, stub, "Who opened it?", context)
        assert mark_text(browser) == "Maria Rossi"
        WebDriverWait(browser, WAIT_S).until(lambda b: len(Select(by_id(b, "adapter")).options) == 2)
        assert by_id(browser, "adapter-field").is_displayed()
        Select(by_id(browser, "adapter")).select_by_value("legal")
        ask(browser, stub, "Who opened it?", context)
        assert stub.received[-1]["body"]["parameters"]["adapter"] == "legal"
        assert "adapter legal" in by_id(browser, "details").text


def test_enter_in_the_question_and_ctrl_enter_in_the_context_ask(browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    stub = Stub()
    stub.canned["Who opened it?"] = Canned(["Maria Rossi"])
    stub.canned["Who cooks?"] = Canned(["Maria"])
    context = HIGHLIGHT_CASES["emoji"][0]
    with uvicorn_thread(stub.app()) as url:
        browser.get(url + "/")
        fill(browser, "context", context)
        question = by_id(browser, "question")
        question.clear()
        question.send_keys("Who opened it?" + Keys.ENTER)
        wait_answered(browser, stub, 0)
        assert mark_text(browser) == "Maria Rossi"

        fill(browser, "question", "Who cooks?")
        area = by_id(browser, "context")
        area.click()
        ActionChains(browser).key_down(Keys.CONTROL).send_keys(Keys.ENTER).key_up(Keys.CONTROL).perform()
        wait_answered(browser, stub, 1)
        assert stub.received[-1]["body"]["inputs"]["question"] == "Who cooks?"
        assert area.get_property("value") == context  # no newline typed into it
        assert by_id(browser, "summary").text.startswith("Maria —")


def test_top_k_sends_the_number_and_lists_the_alternatives_which_highlight_when_clicked(browser):
    from selenium.webdriver.common.by import By

    stub = Stub()
    stub.canned["Who?"] = Canned(["Maria Rossi", "Luigi Verdi", "the café"])
    context = "😀🍕 In 1990 the café 🍔 was opened by Maria Rossi; 🍟 Luigi Verdi joined later."
    with uvicorn_thread(stub.app()) as url:
        browser.get(url + "/")
        ask(browser, stub, "Who?", context)
        assert stub.received[-1]["body"]["parameters"]["top_k"] == 1
        assert not by_id(browser, "alternatives-box").is_displayed()

        ask(browser, stub, "Who?", context, top_k=3)
        assert stub.received[-1]["body"]["parameters"]["top_k"] == 3
        assert by_id(browser, "summary").text.startswith("Maria Rossi — 87 % likely right")
        assert mark_text(browser) == "Maria Rossi"
        items = browser.find_elements(By.CSS_SELECTOR, "#alternatives button")
        assert [i.text for i in items] == ["Luigi Verdi — 6 %", "the café — 3 %"]
        items[0].click()
        assert mark_text(browser) == "Luigi Verdi"
        assert items[0].get_attribute("aria-pressed") == "true"
        items[1].click()
        assert mark_text(browser) == "the café"
        assert view_text(browser) == context
        browser.find_element(By.CSS_SELECTOR, "#summary .answer-text").click()  # back to the answer
        assert mark_text(browser) == "Maria Rossi"


@pytest.mark.parametrize("p, flag, answered", [
    (0.08, None, True), (0.71, None, False), (0.4299, None, True), (0.4301, None, False),
    (0.30, True, True),  # a server whose flag disagrees with its numbers: the words follow the numbers
])
def test_the_words_agree_with_the_no_answer_probability_and_threshold(browser, p, flag, answered):
    stub = Stub()
    stub.canned["Who?"] = Canned(["Maria Rossi"], no_answer_probability=p, no_answer=flag)
    with uvicorn_thread(stub.app()) as url:
        browser.get(url + "/")
        ask(browser, stub, "Who?", HIGHLIGHT_CASES["emoji"][0])
        summary = by_id(browser, "summary").text
        shown_p = percents(summary, r"no-answer probability ([\d.]+) %")
        assert mark_text(browser) == "Maria Rossi"
        if answered:
            assert "No answer" not in summary and summary.startswith("Maria Rossi —")
            assert shown_p < percents(summary, r"says “no answer” above ([\d.]+) %")
            assert js(browser, "return document.querySelector('#context-view mark').className") == "answer"
        else:
            assert summary.startswith("No answer in the text — no-answer probability")
            assert shown_p > percents(summary, r"\(above the ([\d.]+) % threshold\)")
            assert summary.endswith("best guess: “Maria Rossi” (highlighted faintly)")
            assert js(browser, "return document.querySelector('#context-view mark').className") == "best-span"
        if (p, answered) == (0.08, True):
            assert summary == "Maria Rossi — 87 % likely right; no-answer probability 8 % (says “no answer” above 43 %)"
        if p == 0.71:
            assert summary == ("No answer in the text — no-answer probability 71 % (above the 43 % threshold); "
                               "best guess: “Maria Rossi” (highlighted faintly)")
        assert "uncalibrated" not in summary


def test_uncalibrated_numbers_say_so_and_errors_show_the_servers_message(browser):
    stub = Stub()
    stub.canned["Who?"] = Canned(["Maria Rossi"], calibrated=False)
    with uvicorn_thread(stub.app()) as url:
        browser.get(url + "/")
        ask(browser, stub, "Who?", HIGHLIGHT_CASES["emoji"][0])
        assert by_id(browser, "summary").text.endswith("(says “no answer” above 43 %) uncalibrated")
        ask(browser, stub, "Who?", "   ")
        assert by_id(browser, "status").text == "the context is empty"


def long_context() -> tuple[str, str]:
    filler = "".join(f"Line {i}: the river 🌊 flows past the town and nobody answers anything here.\n"
                     for i in range(150))
    return filler + "The lighthouse was built by Margarethe Løvenskiold in 1887.\n" + filler, "Margarethe Løvenskiold"


def mark_inside_box(browser) -> bool:
    return js(browser, """
        const box = document.getElementById('context-view').getBoundingClientRect();
        const mark = document.querySelector('#context-view mark').getBoundingClientRect();
        return box.top <= mark.top && mark.bottom <= box.bottom && 0 <= mark.top && mark.bottom <= innerHeight;""")


def test_the_answer_is_scrolled_into_view_in_a_long_context(browser):
    context, answer = long_context()
    stub = Stub()
    stub.canned["Who built it?"] = Canned([answer])
    with uvicorn_thread(stub.app()) as url:
        browser.get(url + "/")
        ask(browser, stub, "Who built it?", context)
        assert mark_text(browser) == answer
        box = js(browser, "const v = document.getElementById('context-view');"
                          "return [v.scrollHeight, v.clientHeight, v.scrollTop];")
        assert box[0] > 3 * box[1] and box[2] > 0  # a scrolling box, scrolled
        assert mark_inside_box(browser)


@pytest.mark.parametrize("device", ["desktop", "phone"])
def test_the_page_fits_a_desktop_and_a_phone(browser, device):
    from selenium.webdriver.common.by import By

    width, height = (1200, 900) if device == "desktop" else (390, 844)
    stub = Stub()
    stub.canned["Who opened the café?"] = Canned(["Maria Rossi", "Luigi Verdi", "the café"])
    stub.canned["Who founded the town?"] = Canned(["Maria Rossi"], no_answer_probability=0.71)
    context = HIGHLIGHT_CASES["emoji"][0] + " Later Luigi Verdi joined the café as a waiter."
    shots = os.environ.get("PAGE_SHOTS")
    with uvicorn_thread(stub.app()) as url:
        screen(browser, width, height, phone=device == "phone")
        browser.get(url + "/")
        ask(browser, stub, "Who opened the café?", context, top_k=3)
        assert js(browser, "return innerWidth") == width  # on a phone, only with the viewport meta
        content = browser.find_element(By.CSS_SELECTOR, 'meta[name="viewport"]').get_attribute("content")
        assert "width=device-width" in content and "initial-scale=1" in content
        assert js(browser, "return document.documentElement.scrollWidth") <= width  # nothing wider than the screen
        key, top_k, question = (by_id(browser, i).rect for i in ("key", "top-k", "question"))
        if device == "phone":  # the fields stack, each as wide as the form
            assert top_k["y"] >= key["y"] + key["height"] and top_k["width"] == pytest.approx(question["width"], abs=2)
        else:
            assert top_k["y"] == pytest.approx(key["y"], abs=2)
        assert mark_inside_box(browser)
        assert len(browser.find_elements(By.CSS_SELECTOR, "#alternatives button")) == 2
        if shots:
            Path(shots).mkdir(parents=True, exist_ok=True)
            browser.save_screenshot(str(Path(shots) / f"{device}-answer.png"))
        ask(browser, stub, "Who founded the town?", context)
        assert by_id(browser, "summary").text.startswith("No answer in the text")
        assert mark_inside_box(browser)
        if shots:
            browser.save_screenshot(str(Path(shots) / f"{device}-no-answer.png"))


def test_the_real_server_behind_a_key_answers_the_page_with_the_right_highlight(browser, tokenizer):
    """End to end through create_app (API key set, uncalibrated fake model whose span is "Maria Rossi" after
    emoji): the page is public, the key goes with the question, and the highlight is exactly the span."""
    from selenium.webdriver.common.keys import Keys

    from toolkit.config import QAConfig
    from toolkit.features import FeatureConfig, build_features
    from toolkit.inference import Engine
    from toolkit.serving.app import ServerConfig, create_app

    context = HIGHLIGHT_CASES["emoji"][0]
    question = "Who opened it?"
    offsets = build_features(tokenizer, [question], [context], FeatureConfig()).offsets[0]
    first = next(i for i, o in enumerate(offsets) if o and context[o[0]:o[1]].lower() == "maria")
    last = next(i for i, o in enumerate(offsets) if o and context[o[0]:o[1]].lower() == "rossi")

    engine = Engine.single(TokenSpan(first, last), tokenizer, QAConfig(base_model="t", model_type="bert"))
    with uvicorn_thread(create_app(engine, ServerConfig(api_key="sekret"))) as url:
        browser.get(url + "/")
        fill(browser, "context", context)
        fill(browser, "key", "sekret")
        fill(browser, "question", question)
        by_id(browser, "question").send_keys(Keys.ENTER)
        from selenium.webdriver.support.ui import WebDriverWait

        WebDriverWait(browser, WAIT_S).until(lambda b: mark_text(b) != "")
        assert mark_text(browser) == "Maria Rossi"
        assert "uncalibrated" in by_id(browser, "result").text
