"""`eir.public`'s words and pure parts: every key in every language with the same
placeholders, Kazakh and Russian in Cyrillic; the IMEI as typed (TS 23.003 Annex B check
digit); the decision in the public vocabulary; the language chosen."""

from __future__ import annotations

import re
import string

import pytest

from eir.policy.model import Decision, Status, luhn_check_digit
from eir.public import (
    LANGS,
    STATUSES,
    choose_lang,
    load_messages,
    parse_imei,
    public_answer,
)

WORDS = load_messages()


def placeholders(text: str) -> set[str]:
    return {name for _lit, name, _spec, _conv in string.Formatter().parse(text) if name}


def test_every_key_in_every_language_with_the_same_placeholders() -> None:
    assert set(WORDS) == set(LANGS)
    keys = set(WORDS["en"])
    for lang in LANGS:
        assert set(WORDS[lang]) == keys, (lang, set(WORDS[lang]) ^ keys)
        for key in keys:
            value, english = WORDS[lang][key], WORDS["en"][key]
            assert type(value) is type(english), (lang, key)
            if isinstance(value, str):
                assert value.strip() == value and value, (lang, key)
                assert placeholders(value) == placeholders(english), (lang, key)
        assert len(WORDS[lang]["months"]) == 12
    # every public status has its sentence
    assert set(STATUSES) <= keys


def test_kazakh_and_russian_are_written_in_cyrillic() -> None:
    latin_allowed = {"IMEI", "UTC"}
    for lang in ("kk", "ru"):
        for key, value in WORDS[lang].items():
            for text in value if isinstance(value, list) else [value]:
                words = set(re.findall(r"[A-Za-z]+", re.sub(r"\{\w+\}", "", text)))
                assert words <= latin_allowed, (lang, key, words)
    # Kazakh's own letters are there (ә, ғ, қ, ң, ө, ұ, ү, і), so it is not Russian
    kazakh = "".join(v for v in WORDS["kk"].values() if isinstance(v, str))
    assert set("әғқңөұүі") <= set(kazakh)


def test_parse_imei_checks_the_luhn_digit_of_ts_23_003_annex_b() -> None:
    # the worked example of TS 23.003 Annex B: 49015420323751 -> check digit 8
    assert luhn_check_digit("49015420323751") == 8
    assert parse_imei("490154203237518").imei == "490154203237518"
    assert parse_imei("49-015420-323751-8").imei == "490154203237518"
    for wrong in "012345679":
        got = parse_imei("49015420323751" + wrong)
        assert (got.imei, got.error) == (None, "error_check")
    assert parse_imei("4901542032375").error == "error_length"
    assert parse_imei("4901542032375").count == 13
    assert parse_imei("49015420323751a").error == "error_chars"
    assert parse_imei(None).error == "error_missing"
    assert parse_imei(" - ").error == "error_missing"
    assert parse_imei("4" * 1000).count == 64  # only the first 64 characters are looked at


@pytest.mark.parametrize(("decision", "status", "usable", "deadline"), [
    (Decision(Status.WHITELISTED, "registered"), "registered", True, None),
    (Decision(Status.WHITELISTED, "grandfathered"), "registered", True, None),
    (Decision(Status.WHITELISTED, "exempt_class"), "registered", True, None),
    (Decision(Status.WHITELISTED, "a reason a ministry made up"), "registered", True, None),
    (Decision(Status.GREYLISTED, "pending_verification", deadline=99), "not_registered", True,
     99),
    (Decision(Status.BLACKLISTED, "grace_expired", deadline=99), "registration_required",
     False, None),
    (Decision(None, "unknown"), "registration_required", False, None),
    (Decision(Status.BLACKLISTED, "stolen"), "reported_stolen", False, None),
    (Decision(Status.BLACKLISTED, "lost"), "reported_stolen", False, None),
    (Decision(Status.BLACKLISTED, "cloned"), "blocked", False, None),
    (Decision(Status.BLACKLISTED, "counterfeit"), "blocked", False, None),
    (Decision(Status.BLACKLISTED, "illegal_import"), "blocked", False, None),
    (Decision(Status.BLACKLISTED, "unknown_tac"), "blocked", False, None),
    (Decision(Status.BLACKLISTED, "clone_suspected", deadline=99), "blocked", False, None),
    (Decision(Status.BLACKLISTED, "case 42: taken from A. N."), "blocked", False, None),
    (Decision(Status.BLACKLISTED, "malformed"), "invalid_imei", False, None),
])
def test_decisions_in_the_public_vocabulary(decision: Decision, status: str, usable: bool,
                                            deadline: int | None) -> None:
    answer = public_answer(decision)
    assert (answer.status, answer.usable, answer.deadline) == (status, usable, deadline)
    assert answer.status in STATUSES


@pytest.mark.parametrize(("query", "accept", "lang"), [
    (None, None, "kk"),
    ("ru", None, "ru"),
    ("en", "kk", "en"),
    ("xx", "ru-RU,ru;q=0.9", "ru"),
    (None, "kk-KZ", "kk"),
    (None, "en;q=0.2, ru;q=0.8", "ru"),
    (None, "ru;q=0, en", "en"),  # q=0: "not acceptable"
    (None, "de, fr;q=0.9", "kk"),
    (None, "*", "kk"),
    (None, "en, ru", "en"),  # a tie: the first named
    (None, "ru;q=abc, en;q=0.5", "en"),
])
def test_choose_lang(query: str | None, accept: str | None, lang: str) -> None:
    assert choose_lang(query, accept, "kk") == lang
