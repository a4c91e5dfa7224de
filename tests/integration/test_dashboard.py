"""GET /dashboard in a real headless Chromium against a real worker: the page's JavaScript renders live numbers.

Chromium is driven through its command line (``--headless --dump-dom``): the page loads, polls dashboard.json for
a few seconds of virtual time, and the DOM its script built is printed. `make test` installs Chromium (Debian
packages chromium + chromium-driver) when it is missing; without it this test fails and says so.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.integration.conftest import synthetic_shop, write_jsonl

pytestmark = [pytest.mark.broker, pytest.mark.slow]

NUMBERS = ("processed", "events-per-s", "outputs-per-s", "outputs-total", "lag-total", "latency-p50", "latency-p99",
           "latency-n", "churn-count", "recs-count", "offers-count", "dlq-count", "hist-total", "polls")


def chromium() -> str:
    for name in (os.environ.get("TIDEWATER_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)  # type: ignore[return-value]
    pytest.fail("Chromium is not installed: the dashboard test needs a headless browser. `make test` installs it "
                "as root on Debian (`make chromium`: apt-get install -y chromium chromium-driver); or point "
                "TIDEWATER_CHROMIUM at a Chromium/Chrome binary.")


class _Elements(HTMLParser):
    """Every element with an id: its attributes and its text content."""

    VOID = {"meta", "link", "br", "img", "input", "hr", "col", "source", "wbr", "area", "base", "embed", "track"}

    def __init__(self) -> None:
        super().__init__()
        self.by_id: dict[str, dict] = {}
        self.open: list[tuple[str, dict | None]] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attrs_d = {k: v or "" for k, v in attrs}
        element = None
        if "id" in attrs_d:
            element = {"tag": tag, "attrs": attrs_d, "text": "", "children": []}
            self.by_id[attrs_d["id"]] = element
        for _, parent in self.open:
            if parent is not None:
                parent["children"].append(tag)
        if tag not in self.VOID:
            self.open.append((tag, element))

    def handle_endtag(self, tag: str) -> None:
        while self.open:
            open_tag, _ = self.open.pop()
            if open_tag == tag:
                break

    def handle_data(self, data: str) -> None:
        for _, element in self.open:
            if element is not None:
                element["text"] += data


class Page:
    def __init__(self, dom: str, log: str) -> None:
        self.dom, self.log = dom, log
        parser = _Elements()
        parser.feed(dom)
        self.elements = parser.by_id

    def text(self, element_id: str) -> str:
        return self.elements[element_id]["text"].strip()

    def number(self, element_id: str) -> float | None:
        raw = self.elements[element_id]["attrs"].get("data-value", "")
        return float(raw) if raw else None

    def rows(self, tbody_id: str) -> int:
        """Data rows of a table body (the 'none yet' placeholder row does not count)."""
        body = self.elements[tbody_id]
        return 0 if "none yet" in body["text"] or "no partitions" in body["text"] else body["children"].count("tr")


def load(url: str, tmp: Path, budget_ms: int = 3000) -> Page:
    profile = tmp / f"chromium-profile-{time.monotonic_ns()}"
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-extensions", "--mute-audio", "--enable-logging=stderr", "--log-level=0",
           f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}", "--dump-dom", url]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert done.returncode == 0 and "</html>" in done.stdout, \
        f"chromium failed ({done.returncode}):\n{done.stderr[-3000:]}"
    page = Page(done.stdout, done.stderr)
    console_errors = [line for line in done.stderr.splitlines()
                      if "CONSOLE" in line and re.search(r"Uncaught|Error", line)]
    assert not console_errors, "JavaScript errors in the page:\n" + "\n".join(console_errors)
    assert page.text("js-errors") == "", f"the page reported errors: {page.text('js-errors')}"
    assert page.text("status") == "live", f"the page got no data: {page.text('status')!r}"
    assert page.number("polls") >= 2, "the page did not poll dashboard.json repeatedly"
    return page


def test_dashboard_page_renders_live_numbers_in_chromium(deployment, tmp_path):
    started = time.monotonic()
    chromium()  # fails at once, with the reason, when there is no browser
    lines, _ = synthetic_shop(n_users=60, per_user=50)  # 3,000 events: a few seconds of processing on 2 cores
    path = write_jsonl(tmp_path / "in.jsonl", lines)
    worker = deployment.start_worker()
    worker.wait_ready()
    url = f"http://127.0.0.1:{worker.port}/dashboard"

    with urllib.request.urlopen(url, timeout=5) as resp:  # served as one self-contained page
        html = resp.read().decode()
        assert resp.headers.get_content_type() == "text/html"
    assert not re.search(r"""<(script|link)[^>]+(src|href)=["']?(https?:)?//""", html), "external resources"

    before = load(url, tmp_path)  # nothing replayed yet
    assert before.number("processed") == 0
    assert all(n in before.elements for n in NUMBERS)

    replayed: dict = {}
    replay = threading.Thread(target=lambda: replayed.update(deployment.replay_file(path)), daemon=True)
    replay.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # processing has begun and the first lag reading (after a fetch) is in
        data = worker.get("/dashboard.json")
        if data["processed"] > 0 and data["lag"]["total"] is not None:
            break
        time.sleep(0.1)
    began = time.monotonic()
    during = load(url, tmp_path)  # while the worker is processing
    assert during.number("processed") > before.number("processed")
    # the rate covers the last 10 s of wall time: a page that took longer to come up (a cold Chromium on a busy
    # machine) after a short replay may rightly read 0; then the JSON it is drawn from must have shown the rate
    assert during.number("events-per-s") > 0 or (time.monotonic() - began > 8 and data["events_per_s"] > 0)
    assert during.number("lag-total") is not None
    assert during.rows("partitions-body") >= 1

    replay.join(120)
    assert sum(replayed.values()) == len(lines)
    deadline = time.monotonic() + 120  # its own: the first wait, the page and the replay may have used the other
    while time.monotonic() < deadline:  # the lag comes from committed offsets: a commit interval + a reading late
        data = worker.get("/dashboard.json")
        if data["processed"] == len(lines) and data["lag"]["total"] == 0:
            break
        time.sleep(0.3)
    after = load(url, tmp_path)
    assert after.number("processed") == len(lines) >= during.number("processed")
    churn = after.number("churn-count")
    assert churn > 0 and after.number("hist-total") == churn
    bins = [float(e["attrs"]["data-value"]) for k, e in after.elements.items() if k.startswith("churn-bin-")]
    assert len(bins) == 10 and sum(bins) == churn
    assert after.number("recs-count") > 0 and after.rows("recs-body") > 0
    assert after.number("offers-count") == 0 or after.rows("offers-body") > 0
    assert after.number("outputs-total") >= churn + after.number("recs-count") + after.number("offers-count")
    assert after.number("lag-total") == 0
    assert after.rows("partitions-body") == deployment.partitions
    assert after.number("latency-p50") > 0 and after.number("latency-p99") >= after.number("latency-p50")
    assert after.text("churn-model-version") == "heuristic:recency-v1"

    data = worker.get("/dashboard.json")  # the page's numbers are the JSON's
    assert data["processed"] == after.number("processed")
    assert data["outputs"]["churn_scores"] == churn
    assert set(data["watermarks"]) == {str(p) for p in range(deployment.partitions)}
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{worker.port}/metrics", timeout=5).read().decode()
    assert re.search(r'tidewater_consumer_lag\{partition="\d+",topic="[^"]+-clicks"\} 0\.0', metrics), metrics[-2000:]
    print(json.dumps({"test_seconds": round(time.monotonic() - started, 1), "processed": data["processed"],
                      "churn": churn, "offers": data["outputs"]["offers"], "p50_ms": data["batch_latency"]["p50_ms"]}))


def test_regression_the_page_sends_the_read_token_from_its_fragment(deployment, tmp_path):
    """With TIDEWATER_READ_TOKEN the page took the token from its query string (``?token=``), where proxies and
    browser history keep it, and the worker took it there too (found by review). The page now reads it from its
    fragment, which the browser never sends, and passes it on as a bearer token."""
    chromium()
    deployment.env["TIDEWATER_READ_TOKEN"] = "reader-token-of-the-tests"
    worker = deployment.start_worker()
    worker.wait_ready()
    page = load(f"http://127.0.0.1:{worker.port}/dashboard#token=reader-token-of-the-tests", tmp_path)  # live: its polls got data
    assert page.number("processed") == 0
    # the footer's links to the views behind the token are hidden: a link cannot send it (they answered 401)
    assert "hidden" in page.elements["token-links"]["attrs"] and "hidden" in page.elements["stats-link"]["attrs"]
    with pytest.raises(urllib.error.HTTPError) as refused:  # the query string is not read
        urllib.request.urlopen(f"http://127.0.0.1:{worker.port}/dashboard.json?token=reader-token-of-the-tests", timeout=5)
    assert refused.value.code == 401
