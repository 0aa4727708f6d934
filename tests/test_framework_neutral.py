"""The engine imports no web framework: `Refused` is apiguard's own, and each adapter maps
it to its framework (the ASGI adapter to a Starlette HTTPException)."""

from __future__ import annotations

import subprocess
import sys

from apiguard import Refused
from apiguard.decision import Action, Decision


def test_importing_apiguard_and_the_wsgi_adapter_loads_no_starlette_machinery() -> None:
    code = (
        "import sys, apiguard, apiguard.engine, apiguard.wsgi, apiguard.steps\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('starlette', 'fastapi', 'flask', 'django')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    loaded = eval(out)  # a printed list of module names
    assert set(loaded) <= {"starlette", "starlette.types"}, loaded


def test_refused_is_framework_neutral_and_the_asgi_adapter_maps_it() -> None:
    from starlette.exceptions import HTTPException

    from apiguard.asgi import HTTPRefused

    decision = Decision(Action.THROTTLE, "limit:x", 3.0)
    refused = Refused(decision)
    assert not isinstance(refused, HTTPException)
    assert (refused.status_code, refused.decision) == (429, decision)
    mapped = HTTPRefused(Decision(Action.BLOCK, "ban", 60.0))
    assert isinstance(mapped, Refused) and isinstance(mapped, HTTPException)
    assert mapped.status_code == 403
