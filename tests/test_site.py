"""The built docs site: no fonts or other requests to third parties, an API reference
without private base classes or duplicated headings, and (where Chromium is installed)
tables that fit the content column at the site's width.

Builds the site once (needs the ``docs`` extra: skipped without mkdocs).
"""

from __future__ import annotations

import functools
import http.server
import itertools
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytest.importorskip("mkdocs")
pytest.importorskip("mkdocstrings")

#: What would make a reader's browser ask another site for something: fonts, or a
#: stylesheet, script or font linked from a page or imported by a stylesheet.
THIRD_PARTY = re.compile(
    r"fonts\.googleapis|fonts\.gstatic"
    r"|(?:src|href)=\"(?:https?:)?//[^\"]+\.(?:css|js|woff2?|ttf)\""
    r"|(?:@import|url\()\s*[\"']?(?:https?:)?//"
)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "--site-dir", str(out)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=300,
        env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"},
    )
    return out


def test_no_fonts_or_assets_from_third_parties(site: Path) -> None:
    pages = [p for p in site.rglob("*") if p.suffix in (".html", ".css")]
    assert len(pages) > 10
    for page in pages:
        found = THIRD_PARTY.search(page.read_text(errors="replace"))
        assert found is None, f"{page.relative_to(site)} loads {found.group(0)}"


def test_reference_shows_no_private_bases_and_each_heading_once(site: Path) -> None:
    html = (site / "reference" / "index.html").read_text()
    assert "Bases:" not in html
    headings = re.findall(r'<h2 id="([^"]+)"', html)
    assert len(headings) == len(set(headings))
    toc = re.findall(r'class="md-nav__link">\s*<span class="md-ellipsis">\s*([^<\s]+)', html)
    assert not any(a == b for a, b in itertools.pairwise(toc)), "a name listed twice"
    for operation in ("create", "retrieve", "update", "list", "follow", "wait", "run", "map"):
        assert f'id="kernel_async.resources.invocations.Invocations.{operation}"' in html


# --- layout, in a headless browser -----------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

MEASURE = """
<script>
window.addEventListener('load', () => {
  const over = [];
  document.querySelectorAll('.md-typeset__table').forEach((wrap) => {
    const table = wrap.querySelector('table');
    const [inner, outer] = [table.scrollWidth, wrap.clientWidth];
    if (inner > outer + 1) over.push(inner + '>' + outer);
  });
  const split = [...document.querySelectorAll('.doc table code')]
    .filter((c) => /^\\w+$/.test(c.textContent) && c.getClientRects().length > 1)
    .map((c) => c.textContent);
  document.body.setAttribute('data-layout', JSON.stringify({over, split}));
});
</script>
"""


@pytest.fixture(scope="module")
def served(site: Path) -> Iterator[str]:
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (apt-get install chromium)")
@pytest.mark.parametrize("page", ["benchmarks", "reference", "migrating", "cli"])
def test_tables_fit_and_names_stay_whole_at_the_sites_width(
    site: Path, served: str, page: str, tmp_path: Path
) -> None:
    import json

    source = (site / page / "index.html").read_text()
    (site / page / "measured.html").write_text(source.replace("</body>", MEASURE + "</body>"))
    assert CHROMIUM is not None
    done = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'chromium'}",
            "--window-size=1280,1000",
            "--virtual-time-budget=5000",
            "--dump-dom",
            f"{served}/{page}/measured.html",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    found = re.search(r"data-layout=\"([^\"]*)\"", done.stdout)
    assert found is not None, "the page did not load"
    layout = json.loads(found.group(1).replace("&quot;", '"'))
    assert layout == {"over": [], "split": []}
