"""`eir.public`'s rate limits over real HTTP: one client cannot enumerate the registry (429
after its burst, with Retry-After and a plain-words page) while another is still served;
X-Forwarded-For is believed only from trusted proxies; the node has a cap of its own; the
client table stays within its bound."""

from __future__ import annotations

import ipaddress
import sys
import tracemalloc
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from public_support import WHITE, full, node, typo

from eir.config import ConfigError, from_mapping
from eir.public import LANGS, RateLimiter, client_key, load_messages

WORDS = load_messages()


def distinct(count: int, base: int = 35209900000000) -> list[str]:
    """``count`` different valid IMEIs, as an enumerating script would walk them."""
    return [full(str(base + i)) for i in range(count)]


def other_client(url: str, address: str = "127.0.0.2") -> httpx.AsyncClient:
    """A client connecting from another loopback address: another client to the server."""
    return httpx.AsyncClient(base_url=url,
                             transport=httpx.AsyncHTTPTransport(local_address=address))


async def test_enumeration_is_refused_after_the_burst_and_others_are_still_served(
        tmp_path: Path) -> None:
    async with node(tmp_path, rate_per_minute=6.0, burst=3) as n, \
            httpx.AsyncClient(base_url=n.url) as client:
        codes = []
        for imei in distinct(20):
            r = await client.get("/api/v1/check", params={"imei": imei, "lang": "en"})
            codes.append(r.status_code)
            if r.status_code == 429:
                # 6 a minute: the next token in 10 s (9 once a second has passed: a loaded
                # machine may take that long over these requests)
                wait = int(r.headers["retry-after"])
                assert 8 <= wait <= 10
                assert r.headers["content-type"] == "application/problem+json"
                body = r.json()
                assert body["cause"] == "TOO_MANY_REQUESTS"
                assert body["detail"] == WORDS["en"]["limited_text"].format(seconds=wait)
                assert set(body) == {"type", "title", "status", "detail", "cause"}
        assert codes == [200] * 3 + [429] * 17
        assert n.check.counts["limited_client"] == 17
        # the page says it in plain words, in the asked language, with the same header
        for lang in LANGS:
            r = await client.get("/", params={"imei": WHITE, "lang": lang})
            assert r.status_code == 429
            wait = int(r.headers["retry-after"])
            assert 7 <= wait <= 10
            assert WORDS[lang]["limited_title"] in r.text
            assert WORDS[lang]["limited_text"].format(seconds=wait) in r.text
            assert 'class="result result-limited" role="alert"' in r.text
        # a typing mistake is still explained (it is not a lookup)
        r = await client.get("/api/v1/check", params={"imei": typo(WHITE)})
        assert r.status_code == 400
        # another client is served
        async with other_client(n.url) as other:
            for imei in distinct(3, 35209900100000):
                r = await other.get("/api/v1/check", params={"imei": imei})
                assert r.status_code == 200, r.text
            r = await other.get("/api/v1/check", params={"imei": WHITE})
            assert r.status_code == 429
        assert len(n.check.limiter) == 2


async def test_x_forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy(
        tmp_path: Path) -> None:
    async with node(tmp_path, burst=2, rate_per_minute=1.0) as n, \
            httpx.AsyncClient(base_url=n.url) as client:
        codes = [(await client.get("/api/v1/check", params={"imei": imei},
                                   headers={"x-forwarded-for": f"198.51.100.{i}"})).status_code
                 for i, imei in enumerate(distinct(5))]
        assert codes == [200, 200, 429, 429, 429]
        assert list(n.check.limiter.clients) == ["127.0.0.1"]


async def test_trusted_proxies_name_the_client_from_the_right(tmp_path: Path) -> None:
    async with node(tmp_path, burst=2, rate_per_minute=1.0,
                    trusted_proxies=("127.0.0.1/32", "10.0.0.0/8")) as n, \
            httpx.AsyncClient(base_url=n.url) as proxy:
        imeis = iter(distinct(40))

        async def via(xff: str) -> int:
            r = await proxy.get("/api/v1/check", params={"imei": next(imeis)},
                                headers={"x-forwarded-for": xff})
            return r.status_code

        # each client behind the proxy has its own bucket
        assert [await via(f"198.51.100.{i}") for i in range(5)] == [200] * 5
        # a client cannot leave its bucket by writing addresses to the left of its own
        assert [await via(f"203.0.113.{i}, 192.0.2.7, 10.1.2.3") for i in range(4)] == \
            [200, 200, 429, 429]
        assert "192.0.2.7" in n.check.limiter.clients
        # IPv6 clients count per /64
        assert [await via(f"2001:db8:1:2::{i:x}") for i in range(1, 4)] == [200, 200, 429]
        assert "2001:db8:1:2::/64" in n.check.limiter.clients
        # a peer that is not a trusted proxy is the client, whatever it writes
        async with other_client(n.url) as direct:
            codes = [(await direct.get("/api/v1/check", params={"imei": next(imeis)},
                                       headers={"x-forwarded-for": f"198.51.100.{50 + i}"})
                      ).status_code for i in range(3)]
            assert codes == [200, 200, 429]
        assert "127.0.0.2" in n.check.limiter.clients


async def test_the_node_cap_holds_whatever_the_number_of_clients(tmp_path: Path) -> None:
    async with node(tmp_path, burst=5, node_burst=6, node_rate_per_second=0.01,
                    trusted_proxies=("127.0.0.1/32",)) as n, \
            httpx.AsyncClient(base_url=n.url) as proxy:
        answers = [await proxy.get("/api/v1/check", params={"imei": imei, "lang": "ru"},
                                   headers={"x-forwarded-for": f"198.51.100.{i}"})
                   for i, imei in enumerate(distinct(10))]
        assert [r.status_code for r in answers] == [200] * 6 + [429] * 4
        refused = answers[-1]
        wait = int(refused.headers["retry-after"])
        assert 95 <= wait <= 100  # one token at 0.01/s, less what the requests took
        assert refused.json()["detail"] == WORDS["ru"]["busy_text"].format(seconds=wait)
        assert n.check.counts["limited_node"] == 4


async def test_the_client_table_stays_within_max_clients(tmp_path: Path) -> None:
    async with node(tmp_path, max_clients=10, trusted_proxies=("127.0.0.1/32",)) as n, \
            httpx.AsyncClient(base_url=n.url) as proxy:
        for i, imei in enumerate(distinct(50)):
            r = await proxy.get("/api/v1/check", params={"imei": imei},
                                headers={"x-forwarded-for": f"198.51.100.{i}"})
            assert r.status_code == 200
        assert len(n.check.limiter) == 10 and n.check.limiter.forgotten == 40
        # the most recent ten are the ones kept
        assert list(n.check.limiter.clients) == [f"198.51.100.{i}" for i in range(40, 50)]


def test_buckets_refill_at_their_rate_and_memory_is_bounded() -> None:
    now = [1000.0]
    limiter = RateLimiter(rate=0.1, burst=3, node_rate=100.0, node_burst=100,
                          max_clients=1000, clock=lambda: now[0])
    assert [limiter.take("a")[0] for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("a") == (pytest.approx(10.0), "client")
    now[0] += 10.0
    assert limiter.take("a") == (0.0, "")
    assert limiter.take("a")[1] == "client"
    now[0] += 3600.0  # a long pause refills to the burst, never beyond
    assert [limiter.take("a")[0] == 0.0 for _ in range(4)] == [True, True, True, False]
    # 100,000 distinct clients: the table keeps 1,000; measured bytes per client
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(100_000):
        now[0] += 1.0
        limiter.take(str(ipaddress.IPv4Address(0x0A000000 + i)))
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len(limiter) == 1000
    per_client = held / 1000
    print(f"client table: {per_client:.0f} bytes per client held")
    assert per_client < 400


def test_client_keys() -> None:
    trusted = (ipaddress.ip_network("10.0.0.0/8"),)
    assert client_key("192.0.2.1", None, ()) == "192.0.2.1"
    assert client_key("::ffff:192.0.2.1", None, ()) == "192.0.2.1"
    assert client_key("2001:db8::1", None, ()) == "2001:db8::/64"
    assert client_key("2001:db8::1", None, (), ipv6_prefix=128) == "2001:db8::1/128"
    assert client_key("192.0.2.1", "198.51.100.1", ()) == "192.0.2.1"
    assert client_key("10.0.0.1", "198.51.100.1, 10.0.0.2", trusted) == "198.51.100.1"
    assert client_key("10.0.0.1", "10.0.0.3, 10.0.0.2", trusted) == "10.0.0.1"
    assert client_key("10.0.0.1", "nonsense", trusted) == "10.0.0.1"
    assert client_key("10.0.0.1", "[2001:db8::5]", trusted) == "2001:db8::/64"
    assert client_key(None, None, ()) == "-"


@pytest.mark.parametrize(("keys", "message"), [
    ({"rate_per_minute": 0.0}, r"^public\.rate_per_minute: must be a positive number"),
    ({"burst": 0}, r"^public\.burst: must be at least 1"),
    ({"node_rate_per_second": -1.0}, r"^public\.node_rate_per_second: "),
    ({"node_burst": 0}, r"^public\.node_burst: "),
    ({"max_clients": 0}, r"^public\.max_clients: "),
    ({"ipv6_prefix": 0}, r"^public\.ipv6_prefix: "),
    ({"trusted_proxies": ["10.0.0.0/33"]}, r"^public\.trusted_proxies: "),
    ({"answer_floor_ms": 60000.0}, r"^public\.answer_floor_ms: "),
    ({"default_lang": "de"}, r"^public\.default_lang: must be one of kk, ru, en"),
    ({"utc_offset": "UTC+5"}, r"^public\.utc_offset: "),
    ({"listen": "nowhere"}, r"^public\.listen: "),
])
def test_config_errors_name_the_key(keys: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        from_mapping({"public": {"enabled": True, **keys}}).validate()


def test_defaults_are_off_on_loopback() -> None:
    c = from_mapping({}).validate().public
    assert (c.enabled, c.listen, c.trusted_proxies) == (False, "127.0.0.1:8081", ())
    assert (c.rate_per_minute, c.burst, c.node_rate_per_second, c.node_burst) == (6.0, 3, 20.0, 40)
