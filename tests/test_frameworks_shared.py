"""The shared behaviour suite: every test runs on FastAPI, Flask, Django under WSGI and
Django under ASGI (async middleware), so a rule that fires on one and silently not on
another fails the build. Each test shows the rule firing AND benign traffic beside it
passing."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from apiguard import Guard
from conftest import QUOTA_EXCEEDED, Otel
from detection_support import public_ip
from harness import AUDIT, FRAMEWORKS, Answer, Client, close_django, make_client

ALICE = {"x-user": "alice"}
BOB = {"x-user": "bob"}


@pytest.fixture(params=FRAMEWORKS)
def client_for(request: pytest.FixtureRequest) -> Iterator[Callable[[Guard], Client]]:
    framework = request.param

    def build(guard: Guard) -> Client:
        return make_client(framework, guard)

    yield build
    close_django()


def assert_429(r: Answer, *policies: str) -> None:
    assert r.status == 429, (r.status, r.body)
    assert r.headers["content-type"] == "application/problem+json"
    assert r.headers["cache-control"] == "no-store"
    assert int(r.headers["retry-after"]) >= 1
    body = r.json()
    assert body["type"] == QUOTA_EXCEEDED
    assert body["status"] == 429
    assert body["violated-policies"] == list(policies)


def test_decorated_limit_keys_on_the_template_not_the_path(make_guard, client_for):
    call = client_for(make_guard())
    statuses = [call("GET", f"/items/{i}").status for i in range(1, 4)]
    assert statuses == [200, 200, 200]
    refused = call("GET", "/items/4")  # a fresh id is no fresh budget
    assert_429(refused, "limit:item")
    assert refused.headers["ratelimit-policy"] == '"limit:item";q=3;w=60'
    assert refused.headers["ratelimit"].startswith('"limit:item";r=0;t=')
    assert call("GET", "/items/4", ip="198.51.100.9").status == 200  # another client
    assert call("GET", "/open").status == 200  # undecorated routes are not limited by it


def test_admitted_responses_carry_ratelimit_fields(make_guard, client_for):
    call = client_for(make_guard())
    r = call("GET", "/items/1")
    assert r.status == 200
    assert r.headers["ratelimit-policy"] == '"limit:item";q=3;w=60'
    assert r.headers["ratelimit"] == '"limit:item";r=2;t=62'
    assert "ratelimit" not in call("GET", "/open").headers  # no policy, no fields


def test_flow_counts_successes_only(make_guard, client_for):
    call = client_for(make_guard())
    failures = [call("POST", "/coupons/BAD/redeem").status for _ in range(4)]
    assert failures == [400] * 4  # failed attempts give their unit back
    assert [call("POST", f"/coupons/GOOD{i}/redeem").status for i in range(2)] == [200, 200]
    assert_429(call("POST", "/coupons/GOOD3/redeem"), "redeem")
    assert call("POST", "/coupons/GOOD3/redeem", ip="198.51.100.9").status == 200


def test_a_failed_success_counted_flow_advertises_its_unit_given_back(make_guard, client_for):
    """A `count="success"` flow answered without success gives its unit back: its
    response's RateLimit says so (it said one fewer before: a real-app trial)."""
    call = client_for(make_guard())
    failed = call("POST", "/coupons/BAD/redeem")
    assert failed.status == 400
    assert failed.headers["ratelimit"].startswith('"redeem";r=2;'), failed.headers
    ok = call("POST", "/coupons/GOOD1/redeem")
    assert ok.headers["ratelimit"].startswith('"redeem";r=1;'), ok.headers
    failed = call("POST", "/coupons/BAD/redeem")
    assert failed.headers["ratelimit"].startswith('"redeem";r=1;'), failed.headers
    assert call("POST", "/coupons/GOOD2/redeem").headers["ratelimit"].startswith(
        '"redeem";r=0;'
    )


def test_identify_keys_on_the_user_across_ips(make_guard, client_for):
    call = client_for(make_guard({"principal": "3/minute"}))
    ips = [f"192.0.2.{i}" for i in range(1, 5)]
    statuses = [call("GET", "/me", ip=ip, headers=ALICE).status for ip in ips]
    assert statuses == [200, 200, 200, 429]  # rotating IPs does not help alice
    assert call("GET", "/me", ip=ips[0], headers=BOB).status == 200


def test_trusted_proxy_ip_and_spoofed_header(make_guard, client_for):
    call = client_for(make_guard({"ip": "2/minute"}, client_ip={"trusted_proxies": ["10.0.0.0/8"]}))
    via_proxy = [
        call("GET", "/open", ip="10.0.0.1", headers={"x-forwarded-for": "192.0.2.1"}).status
        for _ in range(3)
    ]
    assert via_proxy == [200, 200, 429]
    other = call("GET", "/open", ip="10.0.0.1", headers={"x-forwarded-for": "192.0.2.2"})
    assert other.status == 200  # another client behind the same proxy
    spoofed = [
        call(
            "GET", "/open", ip="198.51.100.1", headers={"x-forwarded-for": f"192.0.2.{50 + i}"}
        ).status
        for i in range(3)
    ]
    assert spoofed == [200, 200, 429]  # an untrusted peer's header is ignored


def test_monitor_mode_admits_and_reports(make_guard, client_for):
    otel = Otel()
    guard = make_guard(meter_provider=otel.meter_provider)
    call = client_for(guard)
    assert [call("GET", "/watched").status for _ in range(3)] == [200, 200, 200]
    assert otel.decisions()[("limit:watched", "monitor")] == 2
    guard.reset()
    with guard.overridden("enforce"):
        assert call("GET", "/watched").status == 200
        assert_429(call("GET", "/watched"), "limit:watched")


def test_repeat_offender_is_banned_with_403(make_guard, client_for):
    guard = make_guard({"principal": "2/minute"}, bans={"after": 2, "base": 600})
    call = client_for(guard)
    key = {"x-api-key": "key-of-a-bot"}
    statuses = [call("GET", "/open", headers=key).status for _ in range(6)]
    assert statuses == [200, 200, 429, 403, 403, 403]  # the second refusal bans
    banned = call("GET", "/items/1", headers=key)
    assert banned.status == 403
    assert banned.headers["content-type"] == "application/problem+json"
    assert banned.json()["title"] == "Forbidden"
    assert int(banned.headers["retry-after"]) > 500
    assert "ratelimit" not in banned.headers  # a ban is not a quota
    assert call("GET", "/open", headers={"x-api-key": "honest"}).status == 200


def test_raising_handler_is_counted(make_guard, client_for):
    call = client_for(make_guard({"principal": "2/minute"}))
    statuses = [call("GET", "/boom").status for _ in range(3)]
    assert statuses == [500, 500, 429]  # the third is refused instead of failing
    assert call("GET", "/open").status == 429  # the two failures spent the budget
    assert call("GET", "/boom", ip="198.51.100.9").status == 500


def test_unrouted_requests_are_counted(make_guard, client_for):
    call = client_for(make_guard({"principal": "2/minute"}))
    assert [call("GET", "/nope").status for _ in range(2)] == [404, 404]
    assert_429(call("GET", "/nope"), "per-principal")
    assert call("GET", "/nope", ip="198.51.100.9").status == 404


def test_refusal_body_is_the_cores(make_guard, client_for):
    """The refusal is byte for byte what apiguard.responses renders, on every framework."""
    call = client_for(make_guard())
    for i in range(3):
        call("GET", f"/items/{i}")
    refused = call("GET", "/items/9")
    body: dict[str, Any] = refused.json()
    assert refused.body == (
        b'{"type":"' + QUOTA_EXCEEDED.encode() + b'","title":"Request cannot be satisfied as '
        b'assigned quota has been exceeded","status":429,"detail":"Retry after '
        + str(body["detail"]).removeprefix("Retry after ").encode()
        + b'","violated-policies":["limit:item"]}'
    )
    assert int(refused.headers["content-length"]) == len(refused.body)


def test_per_route_rule_keys_on_the_route_template(make_guard, client_for):
    """limits.route counts per (principal, method, template): the adapter must record the
    matched template (a missing one would put every route in one shared bucket)."""
    call = client_for(make_guard({"route": "2/minute"}))
    assert [call("GET", f"/items/{i}").status for i in (1, 2)] == [200, 200]
    assert_429(call("GET", "/items/3"), "per-route")
    assert [call("GET", "/open").status for _ in range(2)] == [200, 200]  # its own bucket
    assert call("GET", "/open").status == 429


def test_the_apps_own_decorator_above_apiguards(make_guard, client_for):
    call = client_for(make_guard())
    del AUDIT[:]
    assert [call("GET", "/audited").status for _ in range(3)] == [200, 200, 429]
    assert AUDIT == ["audited_view"] * 3  # the app's decorator ran; apiguard's refused inside
    assert call("GET", "/audited", ip="198.51.100.9").status == 200


def test_account_takeover_detector_fires(make_guard, client_for):
    """A detector, not a limit: password guesses against one account from rotating
    addresses (under every per-IP limit) are held back after `account_failures`, on every
    framework (login outcomes reported with guard.login_result())."""
    rng = random.Random(1)
    guard = make_guard(detection={"account_takeover": {"account_failures": 5}})
    call = client_for(guard)
    statuses = []
    for i in range(12):
        guard.clock.advance(3)  # type: ignore[attr-defined]
        ua = {"user-agent": f"Mozilla/5.0 (X11; Linux x86_64) Firefox/127.{i}"}
        body = {"username": "victim@example.com", "password": f"guess{i}"}
        statuses.append(call("POST", "/login", ip=public_ip(rng), headers=ua, json=body).status)
    assert statuses[:5] == [401] * 5
    assert set(statuses[6:]) <= {403, 429} and statuses[-1] in (403, 429)
    honest = {"username": "alice@example.com", "password": "right"}
    assert call("POST", "/login", ip=public_ip(rng), json=honest).status == 200


def test_scraping_detector_fires(make_guard, client_for):
    """A route read once from each of many new addresses (a scraper on residential
    proxies, a fresh User-Agent each time) is challenged on every framework, while an
    address known for longer than `new_for` reads it on."""
    rng = random.Random(2)
    guard = make_guard(
        detection={"challenge_path": "/challenge", "scraping": {"floor": 20, "new_for": 300}}
    )
    call = client_for(guard)
    known = "198.51.100.40"
    assert call("GET", "/open", ip=known).status == 200
    statuses = []
    for i in range(100):
        guard.clock.advance(10)  # type: ignore[attr-defined]
        ua = {"user-agent": f"Mozilla/5.0 (Windows NT 10.0) Chrome/126.0.{i}"}
        statuses.append(call("GET", "/open", ip=public_ip(rng), headers=ua).status)
        if i >= 40:
            assert call("GET", "/open", ip=known).status == 200
    first = statuses.index(403)
    assert 15 <= first <= 40
    assert set(statuses[first:]) == {403}


def _honest_orders(call: Callable[..., Answer], rng: random.Random, users: list[str]) -> list[int]:
    """Each honest user reads a few of their own orders (ids 10*k+1 .. 10*k+4) from their
    own address; the statuses that were not 200."""
    refused = []
    for n, user in enumerate(users):
        ip = f"198.51.100.{10 + n}"
        for _ in range(rng.randrange(2, 6)):
            order = 10 * n + rng.randrange(1, 5)
            r = call("GET", f"/orders/{order}", ip=ip, headers={"x-user": user})
            if r.status != 200:
                refused.append(r.status)
    return refused


def test_bola_walk_by_a_signed_in_user_is_caught(make_guard, client_for):
    """BOLA, not a limit: a signed-in user (identified by the app) reading other users'
    orders at random, with jittered human timing and rotating addresses, is refused well
    before the population's floor is far behind, on every framework; the users reading
    their own orders beside it never are."""
    rng = random.Random(5)
    guard = make_guard(bans={"enabled": True})
    call = client_for(guard)
    users = [f"user{i}" for i in range(12)]
    refused = _honest_orders(call, rng, users)
    statuses = []
    for _ in range(80):
        guard.clock.advance(rng.uniform(1.0, 6.0))  # type: ignore[attr-defined]
        ua = {"x-user": "mallory", "user-agent": f"Mozilla/5.0 Firefox/12{rng.randrange(9)}.0"}
        order = rng.randrange(1000, 90_000)
        statuses.append(call("GET", f"/orders/{order}", ip=public_ip(rng), headers=ua).status)
        refused += _honest_orders(call, rng, users[:3])
    first = next(i for i, s in enumerate(statuses) if s != 200)
    assert first <= 45, statuses
    assert set(statuses[first:]) <= {403, 429}
    assert refused == []


def test_bola_sequential_walk_from_an_anonymous_address_is_caught(make_guard, client_for):
    """An anonymous address walking order ids one by one is refused after about
    `sequential_run` steps on every framework; another anonymous address reading a few
    orders out of order is not."""
    rng = random.Random(6)
    guard = make_guard(bans={"enabled": True})
    call = client_for(guard)
    statuses = []
    for order in range(500, 560):
        guard.clock.advance(rng.uniform(0.5, 3.0))  # type: ignore[attr-defined]
        statuses.append(call("GET", f"/orders/{order}", ip="192.0.2.66").status)
        if order % 7 == 0:
            r = call("GET", f"/orders/{rng.randrange(1, 400)}", ip="198.51.100.77")
            assert r.status == 200
    first = next(i for i, s in enumerate(statuses) if s != 200)
    assert 10 <= first <= 20, statuses
    assert set(statuses[first:]) <= {403, 429}


def test_bola_counts_ids_declared_in_the_body(make_guard, client_for):
    """Object ids in a JSON body (`@guard.objects(ids=...)` on the route) count as path
    parameters do, on every framework: a signed-in user looking up other users' orders
    one at a time is refused (and stays refused: the challenge holds the lookup route,
    which names no object in its path), while the users looking up their own are not,
    and the walker's own page without objects is not held."""
    rng = random.Random(7)
    guard = make_guard(bans={"enabled": True})
    call = client_for(guard)
    users = [f"user{i}" for i in range(12)]
    refused = []
    for _ in range(3):
        for n, user in enumerate(users):
            body = {"order_id": 10 * n + rng.randrange(1, 5)}
            r = call(
                "POST", "/lookup", ip=f"198.51.100.{10 + n}", headers={"x-user": user}, json=body
            )
            if r.status != 200:
                refused.append(r.status)
    statuses = []
    for _ in range(70):
        guard.clock.advance(rng.uniform(1.0, 6.0))  # type: ignore[attr-defined]
        body = {"order_id": rng.randrange(1000, 90_000)}
        statuses.append(call("POST", "/lookup", headers={"x-user": "mallory"}, json=body).status)
    first = next(i for i, s in enumerate(statuses) if s != 200)
    assert first <= 45, statuses
    assert set(statuses[first:]) <= {403, 429}
    assert call("GET", "/me", headers={"x-user": "mallory"}).status == 200
    assert refused == []


def test_bola_counts_a_batch_reads_ids(make_guard, client_for):
    """A batch read (`guard.objects_touched(ids)` in the handler) counts every id: a user
    pulling 25 foreign orders per request is refused by its third batch, on every
    framework; a user fetching their own 5 orders in one batch again and again is not."""
    guard = make_guard(bans={"enabled": True})
    call = client_for(guard)
    own = {"ids": [31, 57, 58, 90, 144]}
    statuses = []
    for k in range(6):
        guard.clock.advance(20)  # type: ignore[attr-defined]
        ids = list(range(5000 + 37 * k, 5000 + 37 * k + 25 * 7, 7))  # 25 ids, stride 7
        statuses.append(
            call("POST", "/batch", headers={"x-user": "mallory"}, json={"ids": ids}).status
        )
        for n in range(3):
            r = call("POST", "/batch", ip=f"198.51.100.{n}", headers={"x-user": f"u{n}"}, json=own)
            assert r.status == 200
    assert statuses[0] == 200 and 403 in statuses[:3], statuses
    assert set(statuses[statuses.index(403) :]) <= {403, 429}


WORDLIST = [
    "admin",
    ".env",
    "api/v2/users",
    "internal/metrics",
    "debug",
    "graphql",
    "swagger.json",
    "api/internal/config",
    "backup.zip",
    "actuator/health",
    "v1/admin/users",
    "wp-login.php",
    "server-status",
    "api/private",
    "console",
    "config.json",
    "api/v0/orders",
    "export",
    "api/keys",
    "test",
    "old/api",
    "staff",
    "beta/users",
    "api/debug/vars",
    "phpinfo.php",
]


def test_recon_probing_of_paths_no_route_serves_is_caught(make_guard, client_for):
    """Reconnaissance (OWASP API9): an address asking for many paths no route serves (a
    wordlist of shadow endpoints) is refused once it reached the floor, on every
    framework; a person mistyping paths, and another address reading the routes, are not."""
    rng = random.Random(8)
    guard = make_guard(bans={"enabled": True}, detection={"recon": {"floor": 12}})
    call = client_for(guard)
    for typo in ("/opn", "/mee", "/itemz/3"):
        assert call("GET", typo, ip="198.51.100.31").status == 404
    statuses = []
    for word in WORDLIST:
        guard.clock.advance(rng.uniform(1.0, 4.0))  # type: ignore[attr-defined]
        statuses.append(call("GET", f"/{word}", ip="192.0.2.77").status)
        assert call("GET", "/open", ip="198.51.100.31").status == 200
    first = next(i for i, s in enumerate(statuses) if s not in (404, 405))
    # (the floor, 12; a sketch's collisions, which the process's hash seed decides: one
    # or two more)
    assert 11 <= first <= 15, statuses
    assert set(statuses[first:]) == {403}
    assert call("GET", "/open", ip="192.0.2.77").status == 403  # its ban holds everywhere


def test_an_anonymous_lookup_harvest_is_counted_as_writes(make_guard, client_for):
    """An address with no user and no cookie looking up random orders by POST (body ids
    declared with `@guard.objects`, answered 200: the bug is real) is refused past the
    floor (30 distinct objects), on every framework, in random order (no walk); signed-in
    users looking up their own orders beside it are not refused."""
    rng = random.Random(13)
    guard = make_guard(bans={"enabled": True})
    call = client_for(guard)
    honest = []
    statuses = []
    for step in range(60):
        guard.clock.advance(rng.uniform(1.0, 5.0))  # type: ignore[attr-defined]
        body = {"order_id": rng.randrange(1000, 90_000)}
        statuses.append(call("POST", "/lookup", ip="192.0.2.99", json=body).status)
        n = step % 6
        own = {"order_id": 10 * n + rng.randrange(1, 5)}
        r = call(
            "POST", "/lookup", ip=f"198.51.100.{40 + n}", headers={"x-user": f"u{n}"}, json=own
        )
        honest.append(r.status)
    first = next(i for i, s in enumerate(statuses) if s != 200)
    assert 26 <= first <= 35, statuses
    after = statuses[first:]
    assert after.count(200) <= 0.1 * len(after), statuses
    assert set(honest) == {200}
