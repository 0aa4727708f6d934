"""Drive an ASGI app in process: requests from any client address, on a simulated clock.

The driver builds each HTTP scope itself and calls the app directly (no sockets, no
client library), so every request can come from its own IP address and a simulated hour
of traffic takes about a second. Traffic comes from *agents*: generators that yield the
next `Step` (when, what, from where) and receive the `Response` to it, so they can react
(log in, read a token, back off). `run_agents` interleaves them in time order.

`lifespan(app)` runs the app's ASGI lifespan around a run, as a server does: start-up
before the first request (an app that opens its database pool there), shut-down at the
end; the state the start-up leaves (`scope["state"]`) is copied into every request's
scope. An app that does not support the lifespan protocol (it raises, or returns, before
it has answered the start-up) is run without one, as the ASGI spec says.

Each actor keeps its cookies (a jar per actor, like a browser or an HTTP client session):
`Set-Cookie` answers are stored and sent back as `Cookie` on its later requests, unless
the request carries its own `cookie` header or the actor was made with `cookies=False`.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import json
from collections.abc import AsyncIterator, Generator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Message

from apiguard.simulate.clock import FakeClock
from apiguard.steps import REFUSALS

if TYPE_CHECKING:
    from apiguard.guard import Guard

BLOCKED_STATUSES = frozenset({403, 429})  # apiguard's refusals (the demo shop never sends 403)
CHALLENGE_TYPE = "https://apiguard.dev/problems/challenge-required"


@dataclass(frozen=True, slots=True)
class Request:
    """One HTTP request from `ip`; `path` may carry a query string after `?`."""

    method: str
    path: str
    ip: str
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    port: int = 50_000


@dataclass(frozen=True, slots=True)
class Response:
    """What the app answered."""

    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    # whether apiguard refused it (None: not known, e.g. over HTTP; see `refused`)
    guard_refused: bool | None = None

    @property
    def refused(self) -> bool:
        """Refused by apiguard: as the guard counted it when that is known (an app's own
        403 for a missing token is no refusal), else 429, 403 or a challenge."""
        if self.guard_refused is not None:
            return self.guard_refused
        return self.status in BLOCKED_STATUSES or self.challenged

    def json(self) -> Any:
        """The body decoded as JSON (None when it is not JSON)."""
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    def header(self, name: str) -> str | None:
        """First value of a response header (case-insensitive)."""
        raw = name.lower().encode("latin-1")
        for key, value in self.headers:
            if key.lower() == raw:
                return value.decode("latin-1")
        return None

    def header_values(self, name: str) -> list[str]:
        """Every value of a response header (case-insensitive), e.g. Set-Cookie."""
        raw = name.lower().encode("latin-1")
        return [v.decode("latin-1") for k, v in self.headers if k.lower() == raw]

    @property
    def problem_type(self) -> str | None:
        """The `type` of a problem+json body (RFC 9457), None for other answers."""
        ctype = self.header("content-type") or ""
        if "problem+json" not in ctype:
            return None
        data = self.json()
        kind = data.get("type", "about:blank") if isinstance(data, dict) else None
        return kind if isinstance(kind, str) else None

    @property
    def challenged(self) -> bool:
        """apiguard asks for a challenge the app controls (`challenge-required`, answered
        403 by default, or `detection.challenge_status`)."""
        return (
            self.guard_refused is not False
            and self.status >= 400
            and self.problem_type == CHALLENGE_TYPE
        )


def answer_text(response: Response, limit: int = 160) -> str | None:
    """A 4xx/5xx answer's body as one short line (what the app said), else None."""
    if response.status < 400 or not response.body:
        return None
    text = " ".join(response.body[: limit * 4].decode("utf-8", errors="replace").split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True, slots=True)
class Step:
    """An agent's next request: sent at simulated time `at` (seconds from the start)."""

    at: float
    request: Request
    kind: str = "browse"  # free-form label for reports ("redeem", "login", "typo", ...)
    target: str | None = None  # what the request is after (a username, an object), for reports
    keep_answer: bool = False  # record the body of a 4xx/5xx answer (`Record.answer`)


Agent = Generator[Step, Response, None]


@dataclass(frozen=True, slots=True)
class Actor:
    """An agent and the labels its requests are recorded under."""

    scenario: str
    attack: bool
    agent: Agent
    cookies: bool = True  # keep a cookie jar (False: never send cookies back)


@dataclass(frozen=True, slots=True)
class Record:
    """One request of the simulation and its outcome."""

    at: float
    scenario: str
    attack: bool
    kind: str
    method: str
    path: str
    ip: str
    status: int
    actor: int = 0  # index of the actor that sent it
    retry_after: float | None = None  # the Retry-After of the answer, in seconds
    target: str | None = None  # the step's target (a username, an object id)
    problem: str | None = None  # the problem+json `type` of the answer, if any
    guard_refused: bool | None = None  # `Response.guard_refused`
    answer: str | None = None  # the 4xx/5xx answer's body, when the step kept it (a sign-up)

    @property
    def blocked(self) -> bool:
        """Refused by apiguard (`Response.refused`): as the guard counted it, when known;
        else 429 (limit spent), 403 (banned), or a challenge (whatever its status)."""
        if self.guard_refused is not None:
            return self.guard_refused
        return self.status in BLOCKED_STATUSES or self.challenged

    @property
    def challenged(self) -> bool:
        """Answered with apiguard's `challenge-required` (a person can pass it)."""
        return (
            self.guard_refused is not False
            and self.status >= 400
            and self.problem == CHALLENGE_TYPE
        )


def find_guard(app: Any) -> Guard | None:
    """The `Guard` protecting an ASGI or WSGI app: a `GuardMiddleware` in its declared
    middleware (`add_middleware(GuardMiddleware, guard=...)`) or in its built stack (the
    `.app`, `.middleware_stack` and `.wsgi_app` chain)."""
    from apiguard.guard import Guard  # (apiguard.guard imports this package)

    seen: set[int] = set()
    todo = [app]
    while todo:
        obj = todo.pop()
        if obj is None or id(obj) in seen or len(seen) > 256:
            continue
        seen.add(id(obj))
        guard = getattr(obj, "guard", None)
        if isinstance(guard, Guard):
            return guard
        for entry in getattr(obj, "user_middleware", None) or ():
            kwargs = getattr(entry, "kwargs", {}) or {}
            candidate = kwargs.get("guard")
            if candidate is None:
                candidate = next(
                    (a for a in getattr(entry, "args", ()) if isinstance(a, Guard)), None
                )
            if isinstance(candidate, Guard):
                return candidate
        for name in ("app", "middleware_stack", "wsgi_app"):
            todo.append(getattr(obj, name, None))
    return None


class AsgiDriver:
    """Sends `Request`s straight into an ASGI app. With `server_errors`, an exception
    the app raises is what a server would make of it: the response already sent, else a
    500 (the self-test attacks apps it does not know); otherwise it propagates (tests).

    With `guard` (the app's, `find_guard`: it says apiguard protects the app), each
    response says whether apiguard refused it (`Response.guard_refused`: a guard, any of
    the app's, rendered a refusal for it, `steps.REFUSALS`), so the app's own 403s and
    429s are not taken for apiguard's; without, refusals go by status."""

    def __init__(
        self,
        app: ASGIApp,
        host: str = "shop.example",
        *,
        server_errors: bool = False,
        state: dict[str, Any] | None = None,
        guard: Guard | None = None,
    ) -> None:
        self.app = app
        self.guard = guard
        self.host = host
        self.server_errors = server_errors
        self.state = state  # the lifespan's state, copied into each request's scope
        self.last_error: BaseException | None = None  # the app's last exception (a 500)

    async def send(self, request: Request) -> Response:
        """Run one request through the app and collect the complete response."""
        path, _, query = request.path.partition("?")
        headers: list[tuple[bytes, bytes]] = [(b"host", self.host.encode("latin-1"))]
        headers.extend(
            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in request.headers
        )
        if request.body:
            headers.append((b"content-length", str(len(request.body)).encode()))
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": request.method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode("latin-1"),
            "query_string": query.encode("latin-1"),
            "root_path": "",
            "headers": headers,
            "client": (request.ip, request.port),
            "server": (self.host, 80),
            "state": dict(self.state) if self.state else {},
        }
        done = asyncio.Event()
        body_sent = False
        status = 0
        response_headers: tuple[tuple[bytes, bytes], ...] = ()
        chunks: list[bytes] = []

        async def receive() -> Message:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": request.body, "more_body": False}
            await done.wait()  # the client stays connected until the response is complete
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            nonlocal status, response_headers
            if message["type"] == "http.response.start":
                status = int(message["status"])
                response_headers = tuple(message.get("headers", ()))
            elif message["type"] == "http.response.body":
                chunks.append(bytes(message.get("body", b"")))
                if not message.get("more_body", False):
                    done.set()

        # the refusals any guard renders for this request (`steps.REFUSALS`: this task's
        # own list, so requests in flight at once are told apart)
        sink: list[bool] | None = [] if self.guard is not None else None
        token = REFUSALS.set(sink)
        try:
            await self.app(scope, receive, send)
        except Exception as exc:
            if not self.server_errors:
                raise
            self.last_error = exc
            if not status:  # (Starlette's error middleware sends its 500, then raises)
                return Response(500, (), b"", bool(sink) if sink is not None else None)
        finally:
            REFUSALS.reset(token)
            done.set()
        refused = bool(sink) if sink is not None else None
        return Response(status, response_headers, b"".join(chunks), refused)


class LifespanError(Exception):
    """The app's start-up failed (`lifespan.startup.failed`, or it raised after it)."""


@contextlib.asynccontextmanager
async def lifespan(
    app: ASGIApp, *, timeout: float = 60.0, notes: list[str] | None = None
) -> AsyncIterator[dict[str, Any]]:
    """Run `app`'s ASGI lifespan around the block: start-up on entry, shut-down on exit.
    Yields the lifespan state (give it to `AsgiDriver(state=...)`). An app without
    lifespan support (it raises or returns before answering the start-up) runs without
    one (what it raised is added to `notes`); a failed start-up raises `LifespanError`
    with the app's message."""
    state: dict[str, Any] = {}
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    answers: asyncio.Queue[Message | BaseException | None] = asyncio.Queue()
    scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": state}

    async def receive() -> Message:
        return await inbox.get()

    async def send(message: Message) -> None:
        kind = str(message.get("type", ""))
        if not kind.startswith("lifespan."):
            raise RuntimeError(f"unexpected ASGI message {kind!r} in the lifespan scope")
        await answers.put(message)

    async def main() -> None:
        try:
            await app(scope, receive, send)
        except BaseException as exc:  # (reported through the queue)
            await answers.put(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            await answers.put(None)

    task = asyncio.ensure_future(main())
    await inbox.put({"type": "lifespan.startup"})
    try:
        answer = await asyncio.wait_for(answers.get(), timeout)
    except asyncio.TimeoutError:
        task.cancel()
        raise LifespanError(f"the app's start-up did not finish in {timeout:.0f} s") from None
    if isinstance(answer, dict) and answer.get("type") == "lifespan.startup.failed":
        await _settle(task, timeout)
        raise LifespanError(f"the app's start-up failed: {answer.get('message') or '(no message)'}")
    if not (isinstance(answer, dict) and answer.get("type") == "lifespan.startup.complete"):
        await _settle(task, timeout)  # raised or returned first: no lifespan support
        if isinstance(answer, BaseException) and notes is not None:
            notes.append(f"its lifespan raised {type(answer).__name__}: {answer} (run without one)")
        yield {}
        return
    try:
        yield state
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(answers.get(), timeout)  # complete, failed, or an error
        await _settle(task, timeout)


async def _settle(task: asyncio.Future[None], timeout: float) -> None:
    """Wait for the lifespan task to end (cancelled after `timeout`), ignoring its errors."""
    try:
        await asyncio.wait_for(task, timeout)
    except (Exception, asyncio.CancelledError):
        task.cancel()


async def run_agents(
    driver: AsgiDriver, clock: FakeClock, actors: Sequence[Actor], *, origin: float | None = None
) -> list[Record]:
    """Interleave the actors' requests in simulated time order; record every outcome.

    Step times are seconds after `origin` (the clock's reading at the call by default);
    the clock is moved to each request's time before it is sent, and requests are sent
    one at a time, so the run is deterministic for deterministic agents.
    """
    start = clock() if origin is None else origin
    jars: list[dict[str, str]] = [{} for _ in actors]
    queue: list[tuple[float, int, int, Step]] = []
    seq = 0
    for index, actor in enumerate(actors):
        first = next(actor.agent, None)
        if first is not None:
            heapq.heappush(queue, (first.at, seq, index, first))
            seq += 1
    records: list[Record] = []
    while queue:
        at, _, index, step = heapq.heappop(queue)
        clock.advance_to(start + at)
        now = clock() - start
        actor = actors[index]
        req = step.request
        jar = jars[index]
        if actor.cookies and jar and not any(k.lower() == "cookie" for k, _ in req.headers):
            cookie = "; ".join(f"{k}={v}" for k, v in jar.items())
            response = await driver.send(
                Request(
                    req.method,
                    req.path,
                    req.ip,
                    (*req.headers, ("cookie", cookie)),
                    req.body,
                    req.port,
                )
            )
        else:
            response = await driver.send(req)
        if actor.cookies:
            store_cookies(jar, response)
        retry = response.header("retry-after")
        records.append(
            Record(
                now,
                actor.scenario,
                actor.attack,
                step.kind,
                req.method,
                req.path,
                req.ip,
                response.status,
                index,
                float(retry) if retry is not None and retry.isdigit() else None,
                step.target,
                response.problem_type if response.status >= 400 else None,
                response.guard_refused,
                answer_text(response) if step.keep_answer else None,
            )
        )
        try:
            following = actor.agent.send(response)
        except StopIteration:
            continue
        heapq.heappush(queue, (max(following.at, now), seq, index, following))
        seq += 1
    return records


def store_cookies(jar: dict[str, str], response: Response) -> None:
    """Keep the cookies a response sets (`Max-Age=0` or an empty value deletes one)."""
    for header in response.header_values("set-cookie"):
        first, *attributes = header.split(";")
        name, sep, value = first.strip().partition("=")
        if not sep or not name:
            continue
        expired = any(
            a.strip().lower().replace(" ", "") in ("max-age=0", "max-age=-1") for a in attributes
        )
        if expired or not value:
            jar.pop(name, None)
        else:
            jar[name] = value.strip().strip('"')
