"""OpenTelemetry through the API only: attributes on the server span, events, counters.

apiguard never installs or replaces a provider and never opens a span. A decision goes on
the span that serves the request at the moment it is recorded (`request_span`): FastAPI's
own server span when FastAPI opened one (whichever of its operation spans is current, and
whether apiguard was added with `add_middleware` or wraps the app from outside), else the
span current at the checkpoint (an ASGI instrumentation's). With no SDK configured the API
hands out no-op objects and the cost is a context-variable read and a no-op counter call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from opentelemetry import metrics, trace
from opentelemetry.trace import Span

from apiguard import __version__
from apiguard.decision import ALLOWED, Action, Decision

if TYPE_CHECKING:
    from apiguard.detectors.base import Finding
    from apiguard.request import RequestContext


_get_current_span = trace.get_current_span


def _otel_span_lookup() -> tuple[Any, str] | None:
    """The context variable behind OpenTelemetry's current context and the key of the
    current span in it (what `trace.get_current_span` reads through four calls), or None
    when this OpenTelemetry keeps them elsewhere."""
    try:
        from opentelemetry.context import _RUNTIME_CONTEXT
        from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext
        from opentelemetry.trace.propagation import _SPAN_KEY
    except ImportError:  # pragma: no cover
        return None
    var = getattr(_RUNTIME_CONTEXT, "_current_context", None)
    if type(_RUNTIME_CONTEXT) is not ContextVarsRuntimeContext or var is None:
        return None  # pragma: no cover
    return var, _SPAN_KEY


_SPAN_LOOKUP = _otel_span_lookup()
_ALLOW_ATTRS = {"apiguard.rule": "none", "apiguard.decision": Action.ALLOW.value}


def request_span(ctx: RequestContext) -> Span:
    """The span to annotate for `ctx`, now: FastAPI's server span if FastAPI opened one for
    this request (it keeps it in the scope while it serves the request; the current span
    at a checkpoint may be one of its children, "fastapi.dependencies" or
    "fastapi.endpoint"), else the current span (INVALID_SPAN when there is none)."""
    native = ctx.scope.get("fastapi.telemetry")
    if native is not None:
        span = getattr(native, "span", None)
        if isinstance(span, Span) and span.is_recording():
            return span
    return trace.get_current_span()


class Telemetry:
    """Records every decision on the current span and in `apiguard.decisions`."""

    def __init__(self, meter_provider: metrics.MeterProvider | None = None) -> None:
        provider = meter_provider or metrics.get_meter_provider()
        meter = provider.get_meter("apiguard", __version__)
        self.decisions = meter.create_counter(
            "apiguard.decisions",
            unit="{request}",
            description="Requests checked by apiguard, by deciding rule and outcome.",
        )
        self.bans = meter.create_counter(
            "apiguard.bans",
            unit="{ban}",
            description="Temporary bans started, by escalation level.",
        )
        self.detections = meter.create_counter(
            "apiguard.detections",
            unit="{detection}",
            description="Detector findings, by detector, action and whether it was enforced.",
        )
        self._attrs: dict[tuple[str, str], dict[str, str]] = {}

    def record(self, ctx: RequestContext, decision: Decision) -> None:
        """Put the decision on the request's server span (`request_span`) and count it."""
        if decision is ALLOWED:  # the common case, without enum or dict work
            self.decisions.add(1, _ALLOW_ATTRS)
            # request_span(ctx), inlined: this runs for every admitted request
            native = ctx.scope.get("fastapi.telemetry")
            if native is not None:
                span = request_span(ctx)
            elif _SPAN_LOOKUP is not None:
                found = _SPAN_LOOKUP[0].get().get(_SPAN_LOOKUP[1])
                if found is None:  # no span is current: nothing to annotate
                    return
                span = found if isinstance(found, Span) else trace.INVALID_SPAN
            else:  # pragma: no cover
                span = _get_current_span()
            if span.is_recording():
                span.set_attributes(_ALLOW_ATTRS)
                span.set_attribute("apiguard.principal", ctx.principal or ctx.ip_key)
            return
        action = decision.action.value
        rule = decision.rule or "none"
        attrs = self._attrs.get((rule, action))
        if attrs is None:
            if len(self._attrs) > 4096:  # rule names are code-defined; bound anyway
                self._attrs.clear()
            attrs = self._attrs[(rule, action)] = {
                "apiguard.rule": rule,
                "apiguard.decision": action,
            }
        self.decisions.add(1, attrs)
        if decision.new_ban:
            self.bans.add(1, {"apiguard.ban.level": decision.ban_level})
        span = request_span(ctx)
        if not span.is_recording():
            return
        span.set_attributes(attrs)
        span.set_attribute("apiguard.principal", ctx.principal or ctx.ip_key)
        if decision.action is not Action.ALLOW:
            attributes: dict[str, str | int | float] = {
                "apiguard.rule": rule,
                "apiguard.decision": action,
                "apiguard.principal": ctx.principal or ctx.ip_key,
                "apiguard.retry_after": round(decision.retry_after, 3),
            }
            if decision.ban_level:
                attributes["apiguard.ban.level"] = decision.ban_level
            span.add_event("apiguard.detection", attributes)

    def detection(self, ctx: RequestContext, finding: Finding, enforced: bool) -> None:
        """Count a detector's finding, and put it with its evidence (counts, threshold,
        baseline; keyed hashes only) on the request's span if that is still open."""
        self.detections.add(
            1,
            {
                "apiguard.detector": finding.detector,
                "apiguard.action": finding.action,
                "apiguard.enforced": enforced,
            },
        )
        span = request_span(ctx)
        if not span.is_recording():
            return
        attributes: dict[str, str | int | float | bool] = {
            "apiguard.detector": finding.detector,
            "apiguard.action": finding.action,
            "apiguard.enforced": enforced,
            "apiguard.subject": finding.subject,
        }
        for name, value in finding.evidence.items():
            attributes[f"apiguard.evidence.{name}"] = value
        span.add_event("apiguard.finding", attributes)
