"""Regenerate the search page's screenshots in docs/screenshots/ (`make screenshots`).

Indexes a sample of the demo photos (the CC0 clothing catalog beside the repository, or the
test fixtures) into a throwaway home, serves it with `lookalike serve`, and photographs the
main views in Debian's headless Chromium: search by photo with the overview, near-identical
results grouped into stacks, an item's detail, and text search on a phone-sized screen.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from PIL import Image
from playwright.sync_api import Page, expect, sync_playwright

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.e2e.conftest import cli_env, lookalike, running_server  # noqa: E402 - the repository's own helpers

SHARED = ROOT.parent / "shared" / "data" / "clothing"
CHROMIUM = "/usr/bin/chromium"
KEY = "demo-key"


def sample(source: Path, catalog: Path, per_class: int) -> Path:
    """Copy ``per_class`` photos of each class, each with a caption sidecar for text search, plus
    two re-encoded, slightly cropped copies of one shoe (near-identical: they stack). Returns it."""
    for folder in sorted(p for p in source.iterdir() if p.is_dir()):
        for photo in sorted(folder.glob("*.jpg"))[:per_class]:
            target = catalog / folder.name / photo.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(photo, target)
            target.with_suffix(".json").write_text(json.dumps({"caption": f"a product photo: {folder.name}"}))
    shoe = sorted((catalog / "shoes").glob("*.jpg"))[0]
    with Image.open(shoe) as img:
        for n, margin in enumerate((0.03, 0.06), start=1):
            dx, dy = int(img.width * margin), int(img.height * margin)
            copy = img.convert("RGB").crop((dx, dy, img.width - dx, img.height - dy))
            copy.save(shoe.with_name(f"{shoe.stem}-copy{n}.jpg"), quality=70)
            shoe.with_name(f"{shoe.stem}-copy{n}.json").write_text(shoe.with_suffix(".json").read_text())
    return shoe


def query_photo(source: Path) -> Path:
    validation = SHARED / "validation" / "shoes"
    if validation.is_dir():
        return sorted(validation.glob("*.jpg"))[0]
    return ROOT / "tests" / "fixtures" / "queries" / "shoes.jpg"


def settle(page: Page) -> None:
    """Wait for the search to answer and every thumbnail on the page to load."""
    expect(page.locator("#status")).to_contain_text("results")
    page.wait_for_function("() => [...document.querySelectorAll('#results img, #detail[open] img')]"
                           ".every(i => i.complete && i.naturalWidth > 0)")


def shoot(page: Page, base: str, out: Path, photo: Path, stacked: Path) -> None:
    page.goto(f"{base}/ui")
    page.get_by_label("API key").fill(KEY)
    page.get_by_role("button", name="Use key").click()
    expect(page.locator("#ingest-status")).to_have_text("Ready")
    page.locator("#file-input").set_input_files(str(photo))
    settle(page)
    page.screenshot(path=out / "search-by-photo.png", full_page=True)

    page.locator("#group").select_option("2")
    page.locator("#file-input").set_input_files(str(stacked))
    settle(page)
    expect(page.locator("#results .card.stack").first).to_be_visible()
    page.screenshot(path=out / "stacks.png", full_page=True)

    page.locator("#results .card.stack button.open").first.click()
    expect(page.locator("#detail")).to_be_visible()
    settle(page)
    page.screenshot(path=out / "detail.png")
    page.keyboard.press("Escape")


def shoot_phone(page: Page, base: str, out: Path) -> None:
    page.goto(f"{base}/ui")
    page.get_by_label("API key").fill(KEY)
    page.get_by_role("button", name="Use key").click()
    expect(page.locator("#ingest-status")).to_have_text("Ready")
    page.get_by_label("Describe it").fill("shoes")
    page.get_by_role("button", name="Search text").click()
    settle(page)
    page.screenshot(path=out / "phone-text-search.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = SHARED / "train" if (SHARED / "train").is_dir() else ROOT / "tests" / "fixtures" / "images"
    parser.add_argument("--data", type=Path, default=default, help="a folder of class folders of photos")
    parser.add_argument("--per-class", type=int, default=16)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        home, catalog = Path(tmp) / "home", Path(tmp) / "catalog"
        stacked = sample(args.data, catalog, args.per_class)
        env = cli_env(home, Path(os.environ.get("LOOKALIKE_MODEL_DIR", ROOT / ".lookalike" / "models")))
        for step in (["init", "--tenant", "demo", "--api-key", KEY, "--default-collection", "clothing"],
                     ["ingest", str(catalog), "--collection", "clothing", "--tenant", "demo"]):
            result = lookalike(env, *step)
            if result.returncode:
                raise SystemExit(result.stderr)
        with running_server(env) as base, sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
            shoot(browser.new_page(viewport={"width": 1280, "height": 860}), base, args.out, query_photo(args.data),
                  stacked)
            shoot_phone(browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2,
                                         is_mobile=True, has_touch=True), base, args.out)
            browser.close()
    print(f"screenshots in {args.out}")


if __name__ == "__main__":
    main()
