"""In-process traffic simulation on a fake clock (the engine of `apiguard demo`)."""

from apiguard.simulate.clock import FakeClock
from apiguard.simulate.driver import (
    Actor,
    Agent,
    AsgiDriver,
    Record,
    Request,
    Response,
    Step,
    run_agents,
)

__all__ = [
    "Actor",
    "Agent",
    "AsgiDriver",
    "FakeClock",
    "Record",
    "Request",
    "Response",
    "Step",
    "run_agents",
]
