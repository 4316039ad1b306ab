"""The page for people, in a real browser: headless Chromium (Debian's chromium + chromium-driver, which
.ci/run installs) driven by Selenium types a question and reads the highlighted answer."""

import os
import shutil

import pytest

from tests.test_server import CONTEXT, Peak, fake_engine, uvicorn_thread
from toolkit.serving.server import ServerConfig, create_app

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
if not (CHROMIUM and DRIVER) and not os.environ.get("CI"):
    pytest.skip("Debian's chromium and chromium-driver are not installed (CI installs them)", allow_module_level=True)


class NullWins(Peak):
    def logits(self, batch):
        start, end = super().logits(batch)
        start[:, 0] = end[:, 0] = 6.0
        return start, end


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
    yield driver
    driver.quit()


def test_the_page_highlights_the_answer_and_says_no_answer_plainly(browser, tokenizer):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import Select, WebDriverWait

    engine = fake_engine(tokenizer, news=Peak(5), abstain=NullWins(6))
    with uvicorn_thread(create_app(engine, ServerConfig())) as url:
        browser.get(url + "/")
        wait = WebDriverWait(browser, 20)
        wait.until(lambda b: len(Select(b.find_element(By.ID, "adapter")).options) == 2)
        context = browser.find_element(By.ID, "context")
        context.clear()
        context.send_keys(CONTEXT)
        question = browser.find_element(By.ID, "question")
        question.clear()
        question.send_keys("q?")  # [CLS] q ? [SEP]: the fake models point at context tokens 5 and 6
        browser.find_element(By.ID, "ask").click()
        mark = wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, "#context-view mark.answer")))
        assert mark.text == "beta"
        assert browser.find_element(By.ID, "context-view").text == CONTEXT
        assert "start confidence" in browser.find_element(By.ID, "result").text

        Select(browser.find_element(By.ID, "adapter")).select_by_value("abstain")
        browser.find_element(By.ID, "ask").click()
        wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, "#context-view mark.best-span")))
        result = browser.find_element(By.ID, "result").text
        assert "No answer" in result and "Best span (not given as the answer): gamma" in result
        assert browser.find_element(By.CSS_SELECTOR, "#context-view mark.best-span").text == "gamma"
