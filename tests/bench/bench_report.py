"""Benchmark for ``report``: how big a run's report is, how fast it opens, and what it looks like.

Opens ``WORK/report/index.html`` in headless Chromium (selenium, the dev extra; Debian's
``chromium`` and ``chromium-driver``), waits for every image on the page to load, and
prints the page's files and bytes, the load time (navigation start to the load event,
from the browser's own timing), and the images that failed to load (there should be
none). ``--screenshot PNG`` saves the whole page as one picture to look at.

Run:
  .venv/bin/python tests/bench/bench_report.py out/texture25/run --screenshot /tmp/report.png
Prints figures, asserts nothing (not collected by pytest).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path


def driver(width: int):
    from selenium import webdriver

    binary = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    chromedriver = shutil.which("chromedriver") or "/usr/lib/chromium/chromedriver"
    if not binary or not Path(chromedriver).is_file():
        raise SystemExit("no Chromium/chromedriver (Debian: apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    profile = tempfile.mkdtemp(prefix="ldpo-bench-report-")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage",
                 "--disable-background-networking", f"--user-data-dir={profile}", f"--window-size={width},1200"):
        options.add_argument(flag)
    drv = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=chromedriver))
    return drv, profile


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("work", help="a loop's work folder (with report/index.html)")
    ap.add_argument("--screenshot", help="save the whole page as this PNG")
    ap.add_argument("--width", type=int, default=1280, help="window width in pixels")
    args = ap.parse_args()
    page = Path(args.work) / "report/index.html"
    if not page.is_file():
        raise SystemExit(f"{page}: no report (run `ldpo report WORK`)")
    files = [p for p in page.parent.rglob("*") if p.is_file()]
    print(f"{page}: {len(files)} files, {sum(p.stat().st_size for p in files) / 1024:.0f} KiB "
          f"(index.html {page.stat().st_size / 1024:.0f} KiB)")
    drv, profile = driver(args.width)
    try:
        drv.get(page.resolve().as_uri())
        timing = drv.execute_script("const t = performance.getEntriesByType('navigation')[0];"
                                    "return [t.domContentLoadedEventEnd, t.loadEventEnd];")
        # thumbnails load lazily: make the window as tall as the page so that all of them load
        height = drv.execute_script("return document.documentElement.scrollHeight")
        drv.set_window_size(args.width, height)
        images = []
        for _ in range(50):
            images = drv.execute_script("return Array.from(document.images).map(i => [i.complete && "
                                        "i.naturalWidth > 0, i.getAttribute('src')]);")
            if all(ok for ok, _ in images):
                break
            time.sleep(0.1)
        broken = [src for ok, src in images if not ok]
        print(f"load: DOM ready {timing[0]:.0f} ms, load event {timing[1]:.0f} ms; {len(images)} images, "
              f"{len(broken)} not loaded{': ' + ', '.join(broken[:5]) if broken else ''}")
        if args.screenshot:
            drv.save_screenshot(args.screenshot)
            print(f"screenshot: {args.screenshot} ({args.width} x {height} px)")
    finally:
        drv.quit()
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    main()
