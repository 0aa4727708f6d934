"""Flow abuse by a farm of fresh accounts, both ways: one client shape (or one network)
completing a flow for many accounts is refused that flow AND honest users sharing the
most popular client shape, all redeeming the same promotion, are not."""

from __future__ import annotations

import random
from typing import Annotated

from fastapi import Depends, FastAPI

from apiguard import Guard
from apiguard.asgi import GuardMiddleware
from apiguard.simulate.clock import FakeClock
from apiguard.simulate.driver import AsgiDriver, Request
from detection_support import BROWSERS, current_user, public_ip, run

START = 5_000_000.0
APP_UA = "ShopApp/4.2.1 (Android 14; Pixel 8)"


def shop(guard: Guard) -> FastAPI:
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)

    @app.get("/me")
    async def me(user: Annotated[int, Depends(current_user)]) -> dict[str, int]:
        return {"user": user}

    @app.post("/coupons/{code}/redeem")
    @guard.flow("redeem-coupon", "3/hour", count="success")
    async def redeem(code: str, user: Annotated[int, Depends(current_user)]) -> dict[str, str]:
        return {"redeemed": code}

    return app


def test_a_farm_of_fresh_accounts_on_one_client_shape_is_refused_the_flow() -> None:
    clock = FakeClock(START)
    guard = Guard(clock=clock)
    driver = AsgiDriver(shop(guard))
    rng = random.Random(1)

    async def call(method: str, path: str, user: int, ip: str, ua: str) -> int:
        req = Request(
            method, path, ip, (("user-agent", ua), ("authorization", f"Bearer tok-{user}"))
        )
        return (await driver.send(req)).status

    async def scenario() -> tuple[list[int], list[tuple[int, int]]]:
        honest: list[tuple[int, int]] = []
        farm: list[int] = []
        homes = {u: public_ip(rng) for u in range(400)}
        redeemed: set[int] = set()
        for minute in range(120):
            clock.advance(30)
            # honest users: mostly the app (one shared client shape), some browsers;
            # a third of them redeem the promotion at some point
            for u in rng.sample(range(400), 25):
                ua = APP_UA if u % 4 else BROWSERS[u % len(BROWSERS)]
                honest.append((u, await call("GET", "/me", u, homes[u], ua)))
                if u % 3 == 0 and u not in redeemed and rng.random() < 0.3:
                    redeemed.add(u)
                    honest.append(
                        (u, await call("POST", "/coupons/SPRING/redeem", u, homes[u], ua))
                    )
            if minute >= 20:  # the farm: a new account every minute, one redemption each,
                # one scripted client shape, rotating addresses
                bot = 10_000 + minute
                ip = public_ip(rng)
                await call("GET", "/me", bot, ip, "okhttp/4.9.2")
                farm.append(await call("POST", "/coupons/SPRING/redeem", bot, ip, "okhttp/4.9.2"))
        return farm, honest

    farm, honest = run(scenario())
    assert sum(1 for _, s in honest if s == 200) > 1000
    assert [s for _, s in honest if s != 200] == []
    assert 429 in farm
    assert farm.index(429) <= 12
    assert farm.count(200) <= 15
