"""`eir.public` over real HTTP (httpx to a listener on 127.0.0.1): the JSON endpoint and the
page answer each kind of IMEI in plain words, refuse a mistyped one without looking it up,
show nothing private, answer every lookup in the same shape and least time, and write
nothing."""

from __future__ import annotations

import re
import sqlite3
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from public_support import (
    CLONED,
    COUNTERFEIT,
    EXPIRED,
    GREY,
    GREY_DEADLINE,
    NOW,
    PRIVATE,
    SEEN,
    STOLEN,
    UNKNOWN,
    WHITE,
    ZEROS,
    config,
    make_registry,
    node,
    section,
    typo,
)

from eir.app import EirApp
from eir.http import HttpServer
from eir.public import CSP, LANGS, PublicCheck, load_messages

WORDS = load_messages()

# IMEI -> (status, usable)
EXPECTED = {
    WHITE: ("registered", True),
    GREY: ("not_registered", True),
    UNKNOWN: ("not_registered", True),
    SEEN: ("not_registered", True),
    EXPIRED: ("registration_required", False),
    STOLEN: ("reported_stolen", False),
    COUNTERFEIT: ("blocked", False),
    CLONED: ("blocked", False),
    ZEROS: ("invalid_imei", False),
}


async def get_json(client: httpx.AsyncClient, imei: str, lang: str = "en") -> httpx.Response:
    return await client.get("/api/v1/check", params={"imei": imei, "lang": lang})


async def test_every_kind_of_imei_in_plain_words_in_every_language(tmp_path: Path) -> None:
    async with node(tmp_path) as n, httpx.AsyncClient(base_url=n.url) as client:
        for imei, (status, usable) in EXPECTED.items():
            for lang in LANGS:
                r = await get_json(client, imei, lang)
                assert r.status_code == 200, r.text
                assert r.headers["content-type"] == "application/json"
                assert r.headers["content-language"] == lang
                body = r.json()
                assert set(body) == {"imei", "usable", "status", "message", "deadline"}
                assert (body["imei"], body["status"], body["usable"]) == (imei, status, usable)
                if status == "not_registered":
                    assert body["deadline"] is not None
                    assert body["message"].startswith(WORDS[lang]["not_registered"][:20])
                else:
                    assert body["deadline"] is None
                    assert body["message"] == WORDS[lang][status]
        # the grey entry's own grace end, shown in Astana time in each language's words
        r = await get_json(client, GREY, "en")
        assert r.json()["deadline"] == GREY_DEADLINE
        assert r.json()["message"] == (
            "This phone is not registered. It can be used until 20 December 2026, 14:00 "
            "(UTC+5). If it is not registered by then, it will be blocked.")
        assert "до 20 декабря 2026 г., 14:00 (UTC+5)" in (await get_json(client, GREY, "ru")
                                                          ).json()["message"]
        assert "соңғы мерзімі: 2026 жылғы 20 желтоқсан, 14:00 (UTC+5)" in (
            await get_json(client, GREY, "kk")).json()["message"]
        # an IMEI never seen: the grace period counted from now (the node's test clock)
        deadline = datetime.fromisoformat((await get_json(client, UNKNOWN)).json()["deadline"])
        start = datetime.fromisoformat(NOW)
        assert start + timedelta(days=30) <= deadline < start + timedelta(days=30, minutes=5)
        # the page says the same
        r = await client.get("/", params={"imei": STOLEN, "lang": "ru"})
        assert r.status_code == 200 and '<html lang="ru">' in r.text
        assert WORDS["ru"]["reported_stolen"] in r.text


async def test_the_imei_may_be_typed_with_spaces_and_dashes(tmp_path: Path) -> None:
    async with node(tmp_path) as n, httpx.AsyncClient(base_url=n.url) as client:
        for typed in (f"{WHITE[:2]}-{WHITE[2:8]}-{WHITE[8:14]}-{WHITE[14]}",
                      f" {WHITE[:4]} {WHITE[4:8]} {WHITE[8:]} ", f"{WHITE[:8]}/{WHITE[8:]}"):
            r = await get_json(client, typed)
            assert r.status_code == 200 and r.json()["status"] == "registered"
            assert r.json()["imei"] == WHITE


async def test_a_mistyped_imei_is_a_400_with_a_helpful_message_and_no_lookup(
        tmp_path: Path) -> None:
    async with node(tmp_path) as n, httpx.AsyncClient(base_url=n.url) as client:
        cases = [(typo(WHITE), "error_check", {}), (WHITE[:14], "error_length", {"count": 14}),
                 (WHITE + "0", "error_length", {"count": 16}),
                 ("49015420323751X", "error_chars", {}), ("", "error_missing", {}),
                 ("٤٩٠١٥٤٢٠٣٢٣٧٥١٠", "error_chars", {})]  # Arabic-Indic digits: not ASCII
        for typed, key, params in cases:
            for lang in LANGS:
                r = await client.get("/api/v1/check", params={"imei": typed, "lang": lang})
                assert r.status_code == 400
                assert r.headers["content-type"] == "application/problem+json"
                body = r.json()
                detail = WORDS[lang][key].format(**params)
                assert body == {"type": "about:blank", "title": WORDS[lang]["error_title"],
                                "status": 400, "detail": detail, "cause": "INVALID_IMEI",
                                "invalidParams": [{"param": "imei", "reason": detail}]}
                page = await client.get("/", params={"imei": typed, "lang": lang})
                assert page.status_code == 400
                assert 'aria-invalid="true"' in page.text
                assert f'id="imei-error" class="result-text">{detail}<' in page.text.replace(
                    "&#x27;", "'")
        # none of them was a lookup: no token taken, no status counted
        assert len(n.check.limiter) == 0
        assert sum(n.check.counts[s] for s in EXPECTED.values() for s in [s[0]]) == 0
        assert n.check.counts["typo"] == 2 * len(cases) * len(LANGS)
        # no imei at all on the page: the form, 200
        r = await client.get("/", params={"lang": "en"})
        assert r.status_code == 200 and 'id="result"' not in r.text


async def test_security_headers_and_no_inline_code(tmp_path: Path) -> None:
    async with node(tmp_path) as n, httpx.AsyncClient(base_url=n.url) as client:
        answers = [await get_json(client, WHITE), await client.get("/", params={"imei": WHITE}),
                   await client.get("/"), await get_json(client, typo(WHITE)),
                   await client.get("/nothing-here")]
        for r in answers:
            assert r.headers["content-security-policy"] == CSP
            assert "unsafe-inline" not in CSP
            assert r.headers["x-content-type-options"] == "nosniff"
            assert r.headers["referrer-policy"] == "no-referrer"
            assert r.headers["x-frame-options"] == "DENY"
            assert r.headers["cache-control"] == "no-store"
            assert "server" not in r.headers
        page = answers[1].text
        assert "<script" not in page and "<style" not in page and " style=" not in page
        assert not re.search(r"(src|href)=\"(https?:)?//", page), "an external resource"
        assert '<label for="imei">' in page and '<input id="imei" name="imei"' in page
        css = await client.get("/static/public.css")
        assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
        assert css.headers["content-security-policy"] == CSP
        assert "url(" not in css.text and "@import" not in css.text


async def test_nothing_private_in_any_answer(tmp_path: Path) -> None:
    async with node(tmp_path) as n, httpx.AsyncClient(base_url=n.url) as client:
        for imei in EXPECTED:
            for lang in LANGS:
                for r in (await get_json(client, imei, lang),
                          await client.get("/", params={"imei": imei, "lang": lang})):
                    shown = r.text + " " + " ".join(f"{k}: {v}" for k, v in r.headers.items())
                    for secret in PRIVATE:
                        assert secret not in shown, (imei, lang, secret)
                    # no date of any list entry (since, grace end of the expired entry)
                    for stamp in ("2026-01-10", "2026-11-20", "2026-10-31", "2026-10-01",
                                  "2026-11-01"):
                        assert stamp not in shown
                    # no field beyond the public five, no status beyond the public six
                    if r.headers["content-type"] == "application/json":
                        assert r.json()["status"] in {s for s, _u in EXPECTED.values()}


def _skeleton(page: str) -> str:
    """The page without what is looked up: the IMEI, the sentence and its status class."""
    page = re.sub(r"\d{15}", "IMEI", page)
    page = re.sub(r'class="result-text">[^<]*<', 'class="result-text">S<', page)
    return re.sub(r"result result-[a-z_]+", "result result-X", page)


async def test_same_shape_and_least_time_for_unknown_and_registered(tmp_path: Path) -> None:
    floor = 0.08
    async with node(tmp_path, answer_floor_ms=floor * 1000) as n, \
            httpx.AsyncClient(base_url=n.url) as client:
        bodies: dict[str, dict[str, Any]] = {}
        pages: dict[str, str] = {}
        for imei in (WHITE, UNKNOWN, SEEN, STOLEN):
            t0 = time.perf_counter()
            r = await get_json(client, imei)
            assert time.perf_counter() - t0 >= floor
            bodies[imei] = r.json()
            t0 = time.perf_counter()
            pages[imei] = (await client.get("/", params={"imei": imei})).text
            assert time.perf_counter() - t0 >= floor
        shapes = {imei: {k: type(v).__name__ for k, v in b.items() if k != "deadline"}
                  for imei, b in bodies.items()}
        assert len({tuple(sorted(s.items())) for s in shapes.values()}) == 1
        assert list(bodies[WHITE]) == list(bodies[UNKNOWN])
        assert len({_skeleton(p) for p in pages.values()}) == 1


async def test_a_lookup_writes_nothing_and_leaves_the_s13_cache_alone(tmp_path: Path) -> None:
    async with node(tmp_path) as n, httpx.AsyncClient(base_url=n.url) as client:
        regime = n.eir.regime
        assert regime is not None
        await n.eir.flush()
        cached, misses = len(regime.cache), regime.cache.misses
        db = n.eir.config.registry.db
        with sqlite3.connect(db) as conn:
            rows = conn.execute("SELECT COUNT(*) FROM observation").fetchone()[0]
        for imei in (*EXPECTED, "35209900000007", "35209900000015"):
            await get_json(client, imei)
        assert regime.counts == {} and regime.clock_starts == []
        assert regime.cache.pending == 0
        assert (len(regime.cache), regime.cache.misses) == (cached, misses)
        await n.eir.flush()
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT COUNT(*) FROM observation").fetchone()[0] == rows
        # the history is read all the same: SEEN's grace started when S13 saw it
        assert (await get_json(client, SEEN)).json()["status"] == "not_registered"


async def test_language_from_the_query_then_accept_language_then_the_default(
        tmp_path: Path) -> None:
    async with node(tmp_path) as n, httpx.AsyncClient(base_url=n.url) as client:
        async def lang_of(params: dict[str, str], accept: str | None = None) -> str:
            headers = {"accept-language": accept} if accept else {}
            r = await client.get("/", params=params, headers=headers)
            m = re.search(r'<html lang="(\w+)">', r.text)
            assert m and r.headers["content-language"] == m.group(1)
            return m.group(1)

        assert await lang_of({}) == "kk"
        assert await lang_of({}, "ru-RU,ru;q=0.9,en;q=0.8") == "ru"
        assert await lang_of({}, "de-DE, en;q=0.5, kk;q=0.7") == "kk"
        assert await lang_of({"lang": "en"}, "ru") == "en"
        assert await lang_of({"lang": "fr"}, "en-GB") == "en"
        page = (await client.get("/", params={"lang": "ru"})).text
        for code in LANGS:  # the switcher: every language, named in itself
            assert f'href="?lang={code}" hreflang="{code}" lang="{code}"' in page
        assert 'lang="ru" aria-current="true"' in page


async def test_no_registry_is_503_in_plain_words() -> None:
    check = PublicCheck(section(), lambda: None)
    server = HttpServer.listen("public", check.section, check)
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=server.url) as client:
            r = await get_json(client, WHITE, "ru")
            assert r.status_code == 503 and r.json()["detail"] == WORDS["ru"]["unavailable_text"]
            assert int(r.headers["retry-after"]) > 0
            r = await client.get("/", params={"imei": WHITE, "lang": "kk"})
            assert r.status_code == 503 and WORDS["kk"]["unavailable_text"] in r.text
    finally:
        await server.stop()


@pytest.mark.parametrize("lang", LANGS)
def test_deadline_text_uses_the_configured_offset(lang: str) -> None:
    check = PublicCheck(section(utc_offset="-03:30"), lambda: None)
    stamp = int(datetime(2027, 1, 1, 2, 0, tzinfo=UTC).timestamp())
    text = check._deadline_text(lang, stamp)
    assert "22:30" in text and "(UTC-3:30)" in text and "2026" in text


async def test_a_store_that_fails_mid_lookup_is_503_not_500(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    async with node(tmp_path) as n:
        assert n.eir.regime is not None

        def locked(*_: Any, **__: Any) -> Any:  # what a point read meets under a long write
            raise sqlite3.OperationalError("database is locked")

        monkeypatch.setattr(n.eir.regime, "dry_run", locked)
        async with httpx.AsyncClient(base_url=n.url) as client:
            r = await get_json(client, WHITE, "en")
            assert r.status_code == 503, r.text
            assert r.headers["content-type"].startswith("application/problem+json")
            assert int(r.headers["retry-after"]) > 0


async def test_outcomes_are_counted_in_the_node_metrics(tmp_path: Path) -> None:
    await make_registry(tmp_path)
    eir = EirApp(config(tmp_path, public={"enabled": True, "listen": "127.0.0.1:0",
                                          "answer_floor_ms": 0.0}))
    await eir.start()
    try:
        assert eir.public is not None
        async with httpx.AsyncClient(base_url=eir.public.url) as client:
            assert (await get_json(client, WHITE)).status_code == 200
            assert (await get_json(client, typo(WHITE))).status_code == 400
        text = (await eir.collector.render("text/plain"))[0].decode()
        assert 'eir_public_checks_total{outcome="registered"} 1.0' in text
        assert 'eir_public_checks_total{outcome="typo"} 1.0' in text
    finally:
        await eir.stop()
