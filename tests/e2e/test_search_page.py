"""The search page (/ui) in headless Chromium (Debian's package, driven by Playwright), against
`lookalike serve` with real photos: sign in with a key, upload a photo, see ranked thumbnails,
filter by a facet, page, group near-identical results, open "more like this"."""

from __future__ import annotations

import base64
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import FIXTURES, query_image, write_deployment
from tests.e2e.conftest import cli_env, lookalike, running_server

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip("needs Debian's chromium at /usr/bin/chromium (`make setup` installs it)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (`make setup` installs it)")

KEY = "demo-key"
PAGE = 6
DASH = "\u2013"  # the page writes ranges with an en dash
CAPTIONS = {"hat": "a woven sun hat", "pants": "a pair of trousers", "shoes": "a pair of running sneakers"}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[str]:
    home = tmp_path_factory.mktemp("page") / "home"
    write_deployment(home)
    env = cli_env(home, model_dir)
    catalog = home.parent / "catalog"
    shutil.copytree(FIXTURES / "images", catalog)
    for image in catalog.rglob("*.jpg"):  # captions, for text search and alt text
        image.with_suffix(".json").write_text(json.dumps({"caption": CAPTIONS[image.parent.name]}))
    first_shoe = sorted((catalog / "shoes").glob("*.jpg"))[0]
    shutil.copy(first_shoe, catalog / "shoes" / "copy-of-a-shoe.jpg")  # a near-identical pair: a stack
    (catalog / "hat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")  # a recent ingest failure
    result = lookalike(env, "ingest", str(catalog), "--collection", "clothing", "--tenant", "demo")
    assert result.returncode == 0, result.stderr
    with running_server(env) as base:
        yield base


@pytest.fixture
def page(site: str) -> Iterator[sync_api.Page]:
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        tab = context.new_page()
        tab.set_default_timeout(30_000)
        errors: list[str] = []
        tab.on("pageerror", lambda exc: errors.append(str(exc)))
        tab.requested = []  # type: ignore[attr-defined]
        tab.on("request", lambda r: tab.requested.append(r.url))  # type: ignore[attr-defined]
        try:
            yield tab
        finally:
            browser.close()
        assert not errors, f"JavaScript errors: {errors}"


def sign_in(page: sync_api.Page, site: str) -> None:
    page.goto(f"{site}/ui")
    page.get_by_label("API key").fill(KEY)
    page.get_by_role("button", name="Use key").click()
    sync_api.expect(page.locator("#item-count")).to_have_text("13")


def results(page: sync_api.Page) -> list[dict[str, str]]:
    cards = page.locator("#results .card")
    return [{"id": c.locator(".id").inner_text(), "score": c.locator(".score").inner_text(),
             "tags": c.locator(".tags").inner_text() if c.locator(".tags").count() else "",
             "alt": c.locator("img").get_attribute("alt") or ""} for c in cards.all()]


def wait_for_results(page: sync_api.Page, text: str) -> None:
    sync_api.expect(page.locator("#status")).to_contain_text(text)


def test_search_by_photo_filter_page_and_more_like_this(site: str, page: sync_api.Page) -> None:
    sign_in(page, site)
    sync_api.expect(page.locator("#ingest-status")).to_have_text("Ready")
    sync_api.expect(page.locator("#failures")).to_contain_text("broken")
    sync_api.expect(page.locator("#facets")).to_contain_text("shoes")
    page.locator("#page-size").select_option(str(PAGE))

    # Upload a real photo: ranked thumbnails, shoes first, best score first.
    page.locator("#file-input").set_input_files(str(query_image("shoes")))
    wait_for_results(page, f"1{DASH}{PAGE} of 13 results")
    first = results(page)
    assert len(first) == PAGE
    assert "shoes" in first[0]["tags"] and "shoes" in first[1]["tags"], first
    scores = [float(r["score"].split()[1]) for r in first]
    assert scores == sorted(scores, reverse=True)
    assert all(r["alt"] for r in results(page)), "every thumbnail has alt text"
    sync_api.expect(page.locator("#results .badge.exact")).to_have_count(0)  # another product: no copy of it
    for img in page.locator("#results img").all():  # the signed thumbnail links really load
        sync_api.expect(img).to_have_js_property("complete", True)
        assert img.evaluate("i => i.naturalWidth") > 0

    # Next page: the following ranks, none repeated.
    page.get_by_role("button", name="Next").click()
    wait_for_results(page, f"{PAGE + 1}{DASH}{2 * PAGE} of 13 results")
    sync_api.expect(page.locator("#page-info")).to_have_text("Page 2 of 3")
    second = results(page)
    assert not {r["id"] for r in first} & {r["id"] for r in second}

    # A facet filter: only hats, from page 1.
    page.get_by_role("checkbox", name="hat").check()
    wait_for_results(page, "of 4 results")
    assert {r["tags"] for r in results(page)} == {"hat"}
    page.get_by_role("checkbox", name="hat").uncheck()
    wait_for_results(page, f"1{DASH}{PAGE} of 13 results")

    # Grouping: the shoe and its copy become one stack.
    page.locator("#group").select_option("0")
    sync_api.expect(page.locator("#results .card.stack .badge")).to_have_text("2 similar")
    page.locator("#group").select_option("")
    sync_api.expect(page.locator("#results .card.stack")).to_have_count(0)

    # Open a hat, then "more like this": other hats first (the hat itself is left out).
    hat = next(r for r in results(page) if r["tags"] == "hat")
    page.locator("#results .card", has_text=hat["id"]).get_by_role("button").click()
    dialog = page.locator("#detail")
    sync_api.expect(dialog).to_be_visible()
    sync_api.expect(dialog.locator("#detail-title")).to_have_text(hat["id"])
    page.get_by_role("button", name="More like this").click()
    sync_api.expect(dialog).to_be_hidden()
    wait_for_results(page, f"1{DASH}{PAGE} of 12 results")
    similar = results(page)
    assert hat["id"] not in {r["id"] for r in similar}
    assert [r["tags"] for r in similar[:2]] == ["hat"] * 2, similar

    # The key stays in session storage and travels only in headers.
    assert page.evaluate("sessionStorage.getItem('lookalike.key')") == KEY
    assert not [u for u in page.requested if KEY in u]  # type: ignore[attr-defined]


def test_a_turned_copy_of_a_catalog_photo_shows_as_the_exact_match(site: str, page: sync_api.Page,
                                                                      tmp_path: Path) -> None:
    from PIL import Image

    original = sorted((FIXTURES / "images" / "hat").glob("*.jpg"))[0]
    turned = tmp_path / "my-photo.jpg"
    Image.open(original).convert("RGB").rotate(20, expand=True, fillcolor=(255, 255, 255)).save(turned, quality=80)
    sign_in(page, site)
    page.locator("#file-input").set_input_files(str(turned))
    exact = page.locator("#results .card").first.locator(".badge.exact")
    sync_api.expect(exact).to_have_text("exact match")
    assert original.stem in page.locator("#results .card").first.locator(".id").text_content()
    sync_api.expect(page.locator("#results .badge.exact")).to_have_count(1)


def test_text_search_and_region(site: str, page: sync_api.Page) -> None:
    sign_in(page, site)
    page.get_by_label("Describe it").fill("sneakers for running")
    page.get_by_role("button", name="Search text").click()
    wait_for_results(page, "results")
    found = results(page)
    assert found and found[0]["tags"] == "shoes", found
    assert found[0]["alt"] == CAPTIONS["shoes"], "alt text comes from the caption"

    page.locator("#file-input").set_input_files(str(query_image("pants")))
    wait_for_results(page, "of 13 results")
    whole = [r["score"] for r in results(page)]
    # Drag a box on the query photo: the photo is staged again with that region, and searched.
    box = page.locator("#region-frame").bounding_box()
    assert box is not None
    with page.expect_response(lambda r: r.url.endswith("/v1/anchors") and r.status == 201):
        page.mouse.move(box["x"] + box["width"] * 0.2, box["y"] + box["height"] * 0.2)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * 0.8, box["y"] + box["height"] * 0.9, steps=5)
        page.mouse.up()
    sync_api.expect(page.locator("#region")).to_be_visible()
    sync_api.expect(page.get_by_role("button", name="Whole photo")).to_be_enabled()
    page.wait_for_function("s => document.querySelector('#results .score').textContent !== s", arg=whole[0])
    assert [r["score"] for r in results(page)] != whole, "the region is what was searched"


GIVE_FILE = """([kind, name, b64]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const data = new DataTransfer();
  data.items.add(new File([bytes], name, { type: "image/jpeg" }));
  const target = kind === "drop" ? document.getElementById("drop-zone") : document;
  const event = kind === "drop" ? new DragEvent("drop", { dataTransfer: data, bubbles: true, cancelable: true })
                                : new ClipboardEvent("paste", { clipboardData: data, bubbles: true, cancelable: true });
  target.dispatchEvent(event);
}"""


def test_drop_paste_and_keyboard(site: str, page: sync_api.Page) -> None:
    # Playwright turns file-chooser interception on with a fire-and-forget message when the
    # first listener subscribes. `expect_file_chooser()` right before the key press raced it:
    # on a loaded machine the press reached Chromium first, a real (headless: invisible)
    # picker opened, and the wait timed out. Subscribe now, long before the press.
    choosers: list[sync_api.FileChooser] = []
    page.on("filechooser", lambda chooser: choosers.append(chooser))
    sign_in(page, site)
    for kind, photo, expected in (("drop", "hat", "hat"), ("paste", "pants", "pants")):
        data = base64.b64encode(query_image(photo).read_bytes()).decode()
        with page.expect_response(lambda r: r.url.endswith("/v1/anchors") and r.status == 201):
            page.evaluate(GIVE_FILE, [kind, f"{photo}.jpg", data])
        wait_for_results(page, "of 13 results")
        page.wait_for_function("t => document.querySelector('#results .tags').textContent === t", arg=expected)
    # Keyboard only: the drop zone opens the file picker; a result opens with Enter, closes with Escape.
    page.locator("#drop-zone").focus()
    page.keyboard.press("Enter")
    page.wait_for_function("() => document.activeElement.id === 'drop-zone'")  # a round trip after the press
    deadline = time.monotonic() + 10
    while not choosers and time.monotonic() < deadline:
        page.wait_for_timeout(50)  # events are delivered while Playwright waits
    assert len(choosers) == 1 and choosers[0].element.get_attribute("id") == "file-input"
    page.locator("#results .card button.open").first.focus()
    page.keyboard.press("Enter")
    sync_api.expect(page.locator("#detail")).to_be_visible()
    page.keyboard.press("Escape")
    sync_api.expect(page.locator("#detail")).to_be_hidden()


def test_client_side_checks_and_a_wrong_key(site: str, page: sync_api.Page, tmp_path: Path) -> None:
    page.goto(f"{site}/ui")
    page.get_by_label("API key").fill("not-a-key")
    page.get_by_role("button", name="Use key").click()
    sync_api.expect(page.get_by_role("alert")).to_have_text("That API key was not accepted.")
    assert page.evaluate("sessionStorage.getItem('lookalike.key')") is None

    sign_in(page, site)
    gif = tmp_path / "anim.gif"
    gif.write_bytes(b"GIF89a" + b"\0" * 100)
    big = tmp_path / "huge.png"
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * (5 * 1024 * 1024))
    before = len(page.requested)  # type: ignore[attr-defined]
    page.locator("#file-input").set_input_files(str(gif))
    sync_api.expect(page.get_by_role("alert")).to_contain_text("is not a JPEG or PNG photo")
    page.locator("#file-input").set_input_files(str(big))
    sync_api.expect(page.get_by_role("alert")).to_contain_text("the limit is 5 MB")
    assert not [u for u in page.requested[before:] if "/v1/" in u]  # type: ignore[attr-defined]


def test_page_is_served_with_a_strict_policy(site: str) -> None:
    r = requests.get(f"{site}/ui", timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
    assert "script-src 'self'" in r.headers["Content-Security-Policy"]
    assert f'<base href="{site}/ui/">' in r.text
    assert requests.get(f"{site}/ui/app.js", timeout=10).headers["Content-Type"].startswith("text/javascript")
    assert requests.get(f"{site}/ui/secret.py", timeout=10).status_code == 404


def test_an_items_verified_duplicates(site: str) -> None:
    """GET .../items/{id}/duplicates: the catalog's copy of a shoe photo is its duplicate, and
    a hat has none (other hats are other products)."""
    from lookalike.ingest import item_id_for

    auth = {"Authorization": f"Bearer {KEY}"}
    shoe = item_id_for(sorted((FIXTURES / "images" / "shoes").glob("*.jpg"))[0])
    r = requests.get(f"{site}/v1/collections/clothing/items/{shoe}/duplicates", headers=auth, timeout=60)
    assert r.status_code == 200, r.text
    found = r.json()["duplicates"]
    assert [h["id"] for h in found] == [item_id_for(Path("copy-of-a-shoe.jpg"))], found
    assert found[0]["exact_match"] is True and found[0]["inliers"] >= 10
    hat = item_id_for(sorted((FIXTURES / "images" / "hat").glob("*.jpg"))[0])
    r = requests.get(f"{site}/v1/collections/clothing/items/{hat}/duplicates", headers=auth, timeout=60)
    assert r.status_code == 200 and r.json() == {"id": hat, "duplicates": []}, r.text
    missing = requests.get(f"{site}/v1/collections/clothing/items/nope/duplicates", headers=auth, timeout=60)
    assert missing.status_code == 404 and missing.json() == {"error": "Item not found"}
