"""The report page in a real headless browser: name a category, mark a merge, download
review.csv, apply it with ``relabel``. Needs Chromium and chromedriver (Debian: apt-get
install chromium chromium-driver) and selenium (the dev extra); skipped, saying why,
where they are missing."""

from __future__ import annotations

import csv
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from ldpo.common.files.labels import read_labels
from workdir import loop_work, synthetic_work

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
DRIVERS = ("chromedriver",)


def find(names, extra=()):
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    for path in extra:
        if Path(path).is_file():
            return path
    return None


@pytest.fixture
def browser(tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install '.[dev]')")
    binary = find(BROWSERS)
    driver_path = find(DRIVERS, ["/usr/lib/chromium/chromedriver"])
    if not binary or not driver_path:
        pytest.skip("no Chromium/chromedriver installed (Debian: apt-get install chromium chromium-driver)")
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    profile = tempfile.mkdtemp(prefix="ldpo-chrome-")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1280,2000"):
        options.add_argument(flag)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False,
                                              "safebrowsing.enabled": False})
    service = webdriver.ChromeService(executable_path=driver_path)
    drv = webdriver.Chrome(options=options, service=service)
    drv.downloads = downloads
    try:
        yield drv
    finally:
        drv.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for(path: Path, seconds: float = 20) -> Path:
    end = time.time() + seconds
    while time.time() < end:
        if path.is_file() and path.stat().st_size > 0:
            return path
        time.sleep(0.1)
    raise AssertionError(f"{path} was not downloaded")


def load_time_ms(drv) -> int:
    return drv.execute_script("var t = performance.timing; return t.loadEventEnd - t.navigationStart;")


def test_name_merge_download_and_relabel(browser, cli, tmp_path_factory, tmp_path):
    from selenium.webdriver.common.by import By

    work = loop_work(tmp_path_factory)
    out = tmp_path / "report"
    assert cli("report", work, "--out", out, "-q").code == 0
    labels = read_labels(work / "final/labels.csv")
    first, second = labels.classes[0], labels.classes[1]
    browser.get((out / "index.html").as_uri())
    assert browser.execute_script("return document.readyState") == "complete"
    print(f"\nloop report ({len(labels.classes)} categories): load {load_time_ms(browser)} ms")
    assert browser.find_element(By.ID, "status").text == "0 named, 0 to merge"  # the page's script ran

    name = browser.find_element(By.CSS_SELECTOR, f'#cat-{first} input.name')
    name.send_keys('Liver, "axial" CT')
    merge = browser.find_element(By.CSS_SELECTOR, f'#cat-{second} input.merge')
    merge.send_keys("999")  # no such category: flagged, and nothing downloads
    browser.find_element(By.ID, "download").click()
    assert "unknown category" in browser.find_element(By.ID, "status").text
    time.sleep(0.5)
    assert not list(browser.downloads.iterdir())
    merge.clear()
    merge.send_keys(f"{first};999")  # one of two groups unknown: flagged too
    assert "unknown category" in browser.find_element(By.ID, "status").text
    merge.clear()
    merge.send_keys(f"{first};{second}")  # keep it in two groups: accepted
    assert "unknown category" not in browser.find_element(By.ID, "status").text
    merge.clear()
    merge.send_keys(str(first))
    assert "merged" in browser.find_element(By.ID, f"cat-{second}").get_attribute("class")
    browser.find_element(By.ID, "download").click()
    review = wait_for(browser.downloads / "review.csv")

    with open(review, newline="", encoding="utf-8") as fh:
        rows = {int(r["label"]): r for r in csv.DictReader(fh)}
    assert sorted(rows) == labels.classes
    assert rows[first]["name"] == 'Liver, "axial" CT' and rows[second]["merge_into"] == str(first)

    r = cli("relabel", work / "final/labels.csv", review, "--out", tmp_path / "reviewed.csv")
    assert r.code == 0, r.err
    new = read_labels(tmp_path / "reviewed.csv")
    assert new.classes == list(range(len(labels.classes) - 1))
    before = labels.mapping()
    merged = {new.mapping()[i] for i, c in before.items() if c in (first, second)}
    assert len(merged) == 1
    names = {n for i, n in zip(new.ids, new.extra["name"]) if before[i] in (first, second)}
    assert names == {'Liver, "axial" CT'}

    # entries survive a reload (kept in the browser until cleared)
    browser.refresh()
    assert browser.find_element(By.CSS_SELECTOR, f'#cat-{first} input.name').get_attribute("value") \
        == 'Liver, "axial" CT'


def test_a_270_category_page_opens_fast(browser, cli, tmp_path_factory, tmp_path):
    from selenium.webdriver.common.by import By

    work = synthetic_work(tmp_path_factory)
    out = tmp_path / "report"
    assert cli("report", work, "--out", out, "-q").code == 0
    browser.get((out / "index.html").as_uri())
    ms = load_time_ms(browser)
    loaded = browser.execute_script(
        "return Array.from(document.images).filter(function (i) { return i.complete && i.naturalWidth > 0; }).length")
    total = len(browser.find_elements(By.TAG_NAME, "img"))
    files = [p for p in out.rglob("*") if p.is_file()]
    print(f"\n270-category report: load {ms} ms, {loaded} of {total} images loaded at first "
          f"(lazy), {len(files)} files, {sum(p.stat().st_size for p in files) / 1e6:.2f} MB")
    assert len(browser.find_elements(By.CSS_SELECTOR, "section.cat")) == 270
    assert ms < 5000
    browser.find_element(By.ID, "find").send_keys("269")
    visible = [s for s in browser.find_elements(By.CSS_SELECTOR, "section.cat") if s.is_displayed()]
    assert [s.get_attribute("data-label") for s in visible] == ["269"]


def test_the_first_screen_shows_the_tree_and_the_categories(browser, cli, tmp_path_factory, tmp_path):
    """Issue 23 item 6: opened as a user would, the page leads with the category tree and the categories;
    the settings are folded away and show the values the stages used (from the final model's checkpoint)."""
    from selenium.webdriver.common.by import By

    work = loop_work(tmp_path_factory)
    out = tmp_path / "report"
    assert cli("report", work, "--out", out, "-q").code == 0
    browser.get((out / "index.html").as_uri())
    height = browser.execute_script("return window.innerHeight")

    def top(selector: str) -> float:
        return browser.execute_script(
            "return document.querySelector(arguments[0]).getBoundingClientRect().top", selector)

    assert top("#tree") < height and top("section.cat") < height  # both on the first screen
    assert top("#tree") < top("#categories") < top("#history") < top("#settings")
    settings = browser.find_element(By.ID, "settings")
    assert settings.get_attribute("open") is None  # folded away
    used = browser.find_element(By.CSS_SELECTOR, "#settings table.used")
    assert not used.is_displayed()
    browser.find_element(By.CSS_SELECTOR, "#settings > summary").click()
    assert used.is_displayed()
    rows = {r.find_elements(By.TAG_NAME, "td")[0].text: [c.text for c in r.find_elements(By.TAG_NAME, "td")[1:]]
            for r in used.find_elements(By.TAG_NAME, "tr")[1:]}
    # the loop passed no --arch, --lr or --normalize: the page shows what finetune chose, and that it chose it
    assert rows["arch"] == ["resnet18", "(stage default)"] and rows["lr"] == ["0.01", "(stage default)"]
    assert rows["normalize"] == ["zscore", "(stage default)"] and rows["input_size"] == ["48", ""]  # as requested
