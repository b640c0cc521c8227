"""``zooscope report``: the page's content against the zoo, its analyses run and stored,
its Markdown twin, its errors, and the HTML opened in a real browser."""

from __future__ import annotations

import base64
import html
import os
import re
import shutil
import struct
from pathlib import Path

import pytest

import zooscope

from .conftest import run_cli

FAST = ("--plugin", "agreement", "--plugin", "weightstats", "--plugin", "predict")


def chromium() -> str | None:
    """The system Chromium (Debian's package), or the one ZOOSCOPE_CHROMIUM names."""
    named = os.environ.get("ZOOSCOPE_CHROMIUM")
    if named:
        return named
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))
                 if p), None)


@pytest.fixture
def reported(zoo_copy: Path) -> Path:
    """The tiny zoo's HTML report, with three analyses run for it."""
    result = run_cli("report", str(zoo_copy), *FAST)
    assert result.returncode == 0, result.stderr
    page = zoo_copy.with_name("copy_analysis") / "report" / "report.html"
    assert result.stdout.strip() == str(page)
    return page


def test_page_shows_the_card_curves_and_the_analyses_it_ran(reported: Path) -> None:
    zoo_path = reported.parents[2] / "copy.h5"
    text = html.unescape(reported.read_text())
    with zooscope.open_zoo(zoo_path) as zoo:
        info = zoo.info
        stored = {(a["name"], a["key"]): a for a in zoo.analyses()}
        n_cps = len(zoo.checkpoints())
        config = zoo.config_text
    # The analyses it was asked for were run and stored beside the zoo, and each one's
    # reading and figures are on the page.
    assert {name for name, _ in stored} == {"agreement", "weightstats", "predict"}
    for a in stored.values():
        assert a["summary"] in text
    assert text.count("<h3 id=") == 3
    # The card: the zoo's identity as the file records it.
    for fingerprint in info["data"]["fingerprints"].values():
        assert fingerprint in text
    assert f"{info['generator']} {info['generator_version']}" in text
    assert f"4; {n_cps} checkpoints (epochs 0-2)" in text
    assert f"torch {info['versions']['torch']}" in text
    assert config.strip() in text
    # Every image is an embedded PNG; nothing points outside the file.
    sources = re.findall(r'<img src="([^"]+)"', reported.read_text())
    assert len(sources) >= 1 + 3  # learning curves + at least one figure per analysis
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        png = base64.b64decode(src.split(",", 1)[1])
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = struct.unpack(">II", png[16:24])
        assert width > 100 and height > 100
    assert not re.search(r'(src|href)="(https?:)?//', reported.read_text())
    assert "<script" not in reported.read_text()


def test_a_second_report_reuses_the_stored_results(reported: Path) -> None:
    zoo_path = reported.parents[2] / "copy.h5"
    with zooscope.open_zoo(zoo_path) as zoo:
        before = {(a["name"], a["key"]): a["created"] for a in zoo.analyses()}
    again = run_cli("report", str(zoo_path), *FAST, "--format", "md")
    assert again.returncode == 0, again.stderr
    with zooscope.open_zoo(zoo_path) as zoo:
        after = {(a["name"], a["key"]): a["created"] for a in zoo.analyses()}
    assert after == before  # nothing recomputed
    # The Markdown twin: the same readings, its figures as files beside it.
    md = reported.with_name("report.md")
    text = md.read_text()
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert "learning_curves.png" in images and len(images) >= 4
    for name in images:
        assert (md.parent / name).read_bytes()[:4] == b"\x89PNG"
    assert "| pairs differ in | pairs | agree |" in text
    assert text.count("\n### ") == 3


def test_no_run_shows_only_what_is_stored(zoo_copy: Path, tmp_path: Path) -> None:
    result = run_cli("report", str(zoo_copy), "--no-run", "--out", str(tmp_path / "r"))
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "r" / "report.html").read_text()
    assert "No analysis is stored for this zoo." in text
    assert not zoo_copy.with_name("copy_analysis").exists()  # nothing was run or stored
    notes = " ".join(result.stderr.split())
    assert "note: agreement not run: not stored, and --no-run runs nothing" in notes
    assert f"0 analyses on the page; open {tmp_path / 'r' / 'report.html'} in a browser" in notes
    result = run_cli("report", str(zoo_copy), "--no-run", "--format", "md", "--out",
                     str(tmp_path / "m"))
    assert result.returncode == 0, result.stderr
    assert "in a Markdown viewer (its figures are the PNG files beside it)" in " ".join(
        result.stderr.split())
    assert "agreement" in (tmp_path / "m" / "report.md").read_text().split("### Not run")[1]


@pytest.mark.parametrize(("args", "code", "message"), [
    (("missing.h5",), 1, "error: "),
    (("{zoo}", "--plugin", "nosuch"), 1, "error: "),
    (("{zoo}", "--format", "pdf"), 2, "error: --format 'pdf' is neither html nor md"),
    (("{zoo}", "--out", "{file}"), 1, "is a file, not a folder"),
    (("{foreign}",), 1, "error: "),
])
def test_bad_input_gets_one_error_line(zoo_copy: Path, tmp_path: Path, args: tuple[str, ...],
                                       code: int, message: str) -> None:
    import h5py

    file = tmp_path / "a-file"
    file.write_text("x")
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = [1, 2, 3]
    filled = [a.format(zoo=zoo_copy, file=file, foreign=foreign) for a in args]
    result = run_cli("report", *filled, cwd=tmp_path)
    assert result.returncode == code
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.count("error:") == 1


def test_the_page_opens_in_a_real_browser(reported: Path, tmp_path: Path) -> None:
    """Headless Chromium opens the file: every figure decodes, nothing is logged as an
    error, and no request leaves the file."""
    browser_path = chromium()
    if browser_path is None:
        pytest.skip("no chromium binary (apt-get install chromium; .ci/run installs it)")
    sync_api = pytest.importorskip("playwright.sync_api")
    requests: list[str] = []
    problems: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path,
                                    args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("request", lambda r: requests.append(r.url))
            page.on("console", lambda m: problems.append(f"{m.type}: {m.text}")
                    if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: problems.append(f"failed: {r.url[:80]}"))
            page.goto(reported.as_uri(), wait_until="load")
            images = page.evaluate(
                "Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.alt])")
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert len(images) >= 4
    assert all(done and width > 0 for done, width, _ in images), images
    assert problems == []
    assert requests and all(u.startswith(("file:", "data:")) for u in requests), requests
    png = shot.read_bytes()
    assert png[:4] == b"\x89PNG"
    width, height = struct.unpack(">II", png[16:24])
    assert width == 1200 and height > 2000  # the whole page, figures and tables laid out


@pytest.mark.slow
def test_the_default_analyses_are_run(zoo_copy: Path) -> None:
    result = run_cli("report", str(zoo_copy))
    assert result.returncode == 0, result.stderr
    with zooscope.open_zoo(zoo_copy) as zoo:
        names = {a["name"] for a in zoo.analyses()}
    assert names == {"curves", "agreement", "backbones", "weightstats", "predict", "umap"}
    assert "report: analyses" in result.stderr
