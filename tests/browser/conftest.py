"""Headless Debian chromium for the page tests, with every non-loopback request blocked (no internet)."""
import shutil

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is installed by requirements.txt")
    if not shutil.which("chromium"):
        pytest.skip("Debian's chromium is not installed (.ci/run installs it: apt-get install chromium)")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    """A page whose requests outside loopback fail the test (the service must work with no internet)."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    outside = []

    def offline(route):
        url = route.request.url
        if url.startswith(("http://127.0.0.1", "data:", "blob:")):
            return route.continue_()
        outside.append(url)
        return route.abort()

    page.route("**/*", offline)
    yield page
    context.close()
    assert not outside, f"the page tried to reach the internet: {outside}"
