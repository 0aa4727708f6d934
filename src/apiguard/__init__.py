"""apiguard: in-app protection for HTTP APIs against automated and AI-driven abuse."""

__version__ = "0.1.0"

from apiguard.config import GuardConfig
from apiguard.decision import Action, Decision, Policy
from apiguard.engine import Refused
from apiguard.errors import ConfigurationError
from apiguard.guard import Guard
from apiguard.request import RequestContext, current_request, identify
from apiguard.responses import BlockResponse
from apiguard.store.base import Hit as Verdict

__all__ = [
    "Action",
    "BlockResponse",
    "ConfigurationError",
    "Decision",
    "Guard",
    "GuardConfig",
    "Policy",
    "Refused",
    "RequestContext",
    "Verdict",
    "__version__",
    "current_request",
    "identify",
]
