"""The public check's page in a real browser: Debian's headless Chromium driven by Playwright.

In each language a person loads the page, types an IMEI into the labelled field, submits
and reads the answer: a registered phone, a grey one with its deadline, a stolen one, a
typing mistake; then, from a node with a burst of one, the 429 page. The stylesheet must
load under the Content-Security-Policy (no violation reported, its colours applied).

Screenshots of every step are kept in ``build/artifacts/public/`` (under the repository
root; ``EIR_ARTIFACTS`` moves it), one PNG per language and case, for a person to look at
(the Kazakh and Russian texts, the fonts).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from public_support import GREY, STOLEN, WHITE, node, typo

from eir.public import LANGS, load_messages
from testbed import fdpeer

WORDS = load_messages()
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("EIR_ARTIFACTS") or
                 Path(__file__).resolve().parents[2] / "build" / "artifacts") / "public"

GREY_WHEN = {"en": "20 December 2026, 14:00 (UTC+5)",
             "ru": "20 декабря 2026 г., 14:00 (UTC+5)",
             "kk": "2026 жылғы 20 желтоқсан, 14:00 (UTC+5)"}
# background colours of the result box, from public.css (proof the stylesheet applied)
GREEN, AMBER, RED = "rgb(209, 231, 221)", "rgb(255, 243, 205)", "rgb(248, 215, 218)"


def _browser_or_skip() -> str:
    if Path(CHROMIUM).exists():
        return CHROMIUM
    if fdpeer.must_not_skip():
        pytest.fail(f"{CHROMIUM} missing where it is required (CI/EIR_REQUIRE_INTEROP set)")
    pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")


class Watch:
    """What the page's console says about blocked resources (CSP violations)."""

    def __init__(self, page: Any) -> None:
        self.violations: list[str] = []
        page.on("console", self._console)

    def _console(self, msg: Any) -> None:
        if "Content Security Policy" in msg.text or "Refused to" in msg.text:
            self.violations.append(msg.text)


async def submit(page: Any, lang: str, typed: str, *, enter: bool = False) -> Any:
    """Type into the field found by its label, submit, return the navigation's response."""
    field = page.get_by_label(WORDS[lang]["label"], exact=True)
    await field.fill(typed)
    async with page.expect_navigation() as nav:
        if enter:
            await field.press("Enter")
        else:
            await page.get_by_role("button", name=WORDS[lang]["submit"]).click()
    return await nav.value


async def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")


async def test_a_buyer_checks_phones_in_every_language(tmp_path: Path) -> None:
    exe = _browser_or_skip()
    from playwright.async_api import async_playwright

    async with node(tmp_path) as n, async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=exe)
        try:
            page = await browser.new_page(viewport={"width": 800, "height": 900})
            watch = Watch(page)
            # the switcher: from English to each language, and <html lang> follows
            await page.goto(f"{n.url}/?lang=en")
            await page.get_by_role("link", name=WORDS["kk"]["lang_name"]).click()
            assert await page.get_attribute("html", "lang") == "kk"
            for lang in LANGS:
                w = WORDS[lang]
                await page.goto(f"{n.url}/?lang={lang}")
                assert await page.get_attribute("html", "lang") == lang
                assert await page.title() == w["title"]
                await shot(page, f"{lang}-form")
                cases = [
                    ("white", WHITE, 200, w["registered"], GREEN),
                    ("grey", f"{GREY[:8]} {GREY[8:14]} {GREY[14]}", 200,
                     w["not_registered"].format(deadline=GREY_WHEN[lang]), AMBER),
                    ("black", STOLEN, 200, w["reported_stolen"], RED),
                    ("typo", typo(WHITE), 400, w["error_check"], RED),
                ]
                for i, (case, typed, code, sentence, colour) in enumerate(cases):
                    response = await submit(page, lang, typed, enter=i % 2 == 1)
                    assert response.status == code, case
                    assert await page.get_attribute("html", "lang") == lang
                    result = page.locator("#result")
                    assert await result.locator(".result-text").inner_text() == sentence
                    assert await result.evaluate(
                        "e => getComputedStyle(e).backgroundColor") == colour, case
                    await shot(page, f"{lang}-{case}")
                # the mistyped IMEI stays in the field, marked invalid, the message tied to it
                field = page.get_by_label(w["label"], exact=True)
                assert await field.input_value() == typo(WHITE)
                assert await field.get_attribute("aria-invalid") == "true"
                assert "imei-error" in (await field.get_attribute("aria-describedby") or "")
            assert watch.violations == []
        finally:
            await browser.close()


async def test_the_429_page_in_every_language(tmp_path: Path) -> None:
    exe = _browser_or_skip()
    from playwright.async_api import async_playwright

    async with node(tmp_path, burst=1, rate_per_minute=0.5) as n, async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=exe)
        try:
            page = await browser.new_page(viewport={"width": 800, "height": 900})
            watch = Watch(page)
            await page.goto(f"{n.url}/?lang=en")
            assert (await submit(page, "en", WHITE)).status == 200
            for lang in LANGS:
                await page.goto(f"{n.url}/?lang={lang}")
                response = await submit(page, lang, STOLEN)
                assert response.status == 429
                retry = int(response.headers["retry-after"])  # 120 s a token, less the wait
                assert 100 <= retry <= 120
                result = page.locator("#result")
                assert await result.locator("h2").inner_text() == WORDS[lang]["limited_title"]
                assert await result.locator(".result-text").inner_text() == \
                    WORDS[lang]["limited_text"].format(seconds=retry)
                assert await result.get_attribute("role") == "alert"
                assert await result.evaluate(
                    "e => getComputedStyle(e).backgroundColor") == AMBER
                await shot(page, f"{lang}-429")
            assert watch.violations == []
        finally:
            await browser.close()

