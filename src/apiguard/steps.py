"""The decision steps every adapter runs around the app, framework-neutral.

An adapter (ASGI, WSGI, Django) builds the request context with `Engine.begin`, answers
`Engine.early_ban`, sets the context variable for `identify()` and the decorators, and then
calls these at the same moments, sync or async:
- `at_response` when the app starts its response (the checkpoint for everything the
  decorators and `identify()` did not check): the refusal to send instead, or None;
- `at_unanswered` when the app raised or returned without answering: every request is
  counted, and a refused one gets the refusal;
- `at_cancelled` when the request was cancelled (count it, answer nothing);
- `started` once an admitted response starts: detectors observe, cookies to set;
- `end` once the request is over: rules observe the outcome, the context is released.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from apiguard.decision import ALLOWED, Decision
from apiguard.engine import Engine, Refused
from apiguard.login import html_answer
from apiguard.request import RequestContext
from apiguard.responses import BlockResponse, block_response

if TYPE_CHECKING:
    from apiguard.guard import Guard

# where a caller that drives the app in process (the self-test's driver) collects the
# refusals rendered for its request: a list it sets around the call (tasks the app starts
# see the same list), appended to on every refusal of any guard
REFUSALS: ContextVar[list[bool] | None] = ContextVar("apiguard_refusals", default=None)


def _refusal(decision: Decision | None) -> Decision | None:
    if decision is None or decision is ALLOWED or not decision.refused:
        return None
    return decision


def _standing(ctx: RequestContext, decision: Decision | None) -> Decision | None:
    """An earlier refusal of this request (e.g. `login_result`) the app caught stands,
    whatever a later checkpoint found."""
    earlier = ctx.decision
    if earlier is None or earlier is ALLOWED:
        return decision
    return earlier if earlier.refused else decision


def render(guard: Guard, decision: Decision) -> BlockResponse:
    """The refusal to send: `on_block`'s, else the default problem+json (429/403, or the
    configured challenge status)."""
    sink = REFUSALS.get()
    if sink is not None:
        sink.append(True)
    config = guard.config
    default = block_response(
        decision, config.ratelimit_headers, config.detection.challenge_status
    )
    return guard.block_response(decision, default)


def at_response(engine: Engine, ctx: RequestContext, status: int) -> Decision | None:
    """The response-start checkpoint from sync code: the refusal that replaces the app's
    response (refused now, or at a checkpoint whose exception the app swallowed), or None."""
    rules = engine.rules_at_response(ctx.scope, status)
    decision = ctx.decision
    if not ctx.global_done or not ctx.checked(rules):
        if rules:  # a streaming endpoint: its body's entry is charged now
            ctx.prechecked = rules
        try:
            decision = engine.check_sync(ctx, rules)
        except Refused as refused:
            decision = refused.decision
        decision = _standing(ctx, decision)
    if ctx.scrape_late and _refusal(decision) is None:
        decision = engine.late_gate(ctx) or decision
    if decision is None or decision is ALLOWED:  # (the common case, without the calls)
        return None
    refusal = _refusal(decision)
    if refusal is not None:
        ctx.refused_sent = True
    return refusal


async def at_response_async(engine: Engine, ctx: RequestContext, status: int) -> Decision | None:
    """`at_response` from async code (a remote store is awaited)."""
    rules = engine.rules_at_response(ctx.scope, status)
    decision = ctx.decision
    if not ctx.checked(rules):
        if rules:
            ctx.prechecked = rules
        try:
            if engine.store.local:
                decision = engine.check_sync(ctx, rules)
            else:
                decision = await engine.check_async(ctx, rules)
        except Refused as refused:
            decision = refused.decision
        decision = _standing(ctx, decision)
    if ctx.scrape_late and _refusal(decision) is None:
        decision = engine.late_gate(ctx) or decision
    refusal = _refusal(decision)
    if refusal is not None:
        ctx.refused_sent = True
    return refusal


def at_unanswered(engine: Engine, ctx: RequestContext) -> Decision | None:
    """A request the app did not answer (it raised, or returned without a response): run
    the checkpoint if none ran and return the refusal to send, or None."""
    decision = ctx.decision
    if not ctx.global_done:
        try:
            decision = engine.check_sync(ctx, ())
        except Refused as refused:
            decision = refused.decision
    refusal = _refusal(decision)
    if refusal is not None:
        ctx.refused_sent = True
    return refusal


async def at_unanswered_async(engine: Engine, ctx: RequestContext) -> Decision | None:
    """`at_unanswered` from async code."""
    decision = ctx.decision
    if not ctx.global_done:
        try:
            if engine.store.local:
                decision = engine.check_sync(ctx, ())
            else:
                decision = await engine.check_async(ctx, ())
        except Refused as refused:
            decision = refused.decision
    refusal = _refusal(decision)
    if refusal is not None:
        ctx.refused_sent = True
    return refusal


def at_cancelled(engine: Engine, ctx: RequestContext, answered: bool) -> None:
    """A cancelled request: counted (in-process store only: no awaiting here), unanswered."""
    if not answered and not ctx.refused_sent and engine.store.local and not ctx.global_done:
        with contextlib.suppress(Refused):
            engine.check_sync(ctx, ())


def started(
    engine: Engine, ctx: RequestContext, status: int, headers: Iterable[tuple[Any, Any]] = ()
) -> list[bytes]:
    """The app's response starts with `status` and `headers` (admitted): the detectors
    observe it now with an in-process store (the server span is still open for their
    findings), and the Set-Cookie values the response must carry (a challenge pass, a
    login's device cookie)."""
    login = ctx.login
    if login is not None:
        # (a login answered with a page, a form's; 204 No Content is none)
        login.html = status != 204 and html_answer(headers)
        if login.checking and login.success is None and status < 500 and login.rule is None:
            login.success = login.inferred = True  # (checked, and no failure reported)
    if engine.detectors and engine.store.local:
        engine.observe(ctx, status)
    if login is not None or ctx.cookies is not None or ctx.device_for is not None:
        return engine.response_cookies(ctx, status)
    return []


def end(engine: Engine, ctx: RequestContext, status: int | None) -> None:
    """The request is over: rules and detectors observe the outcome (`status` None: no
    status of the app's went out), and the context drops the request's objects (servers
    copy contexts, e.g. a keep-alive timer: those copies keep an empty shell)."""
    # (finish: rules observe the outcome, a login lands, detectors observe if not yet)
    if ctx.charges or ctx.login is not None or (engine.detectors and not ctx.observed):
        # once a status went out, it is the outcome (a failing background task or a client
        # gone after the response must not refund a delivered success)
        engine.finish(ctx, None if ctx.refused_sent else status)
    ctx.release()


async def end_async(engine: Engine, ctx: RequestContext, status: int | None) -> None:
    """`end` from async code (a remote store's observations are awaited)."""
    if ctx.charges or ctx.login is not None or (engine.detectors and not ctx.observed):
        outcome = None if ctx.refused_sent else status
        if engine.store.local:
            engine.finish(ctx, outcome)
        else:
            await engine.afinish(ctx, outcome)
    ctx.release()
