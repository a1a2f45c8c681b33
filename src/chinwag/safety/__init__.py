"""chinwag.safety: the guard in front of and behind the model (see docs/safety.md).

from chinwag.safety import Guard
guard = Guard.load()                 # or Guard.load("path/to/policy.yaml")
verdict = guard.check("message", history=[{"role": "user", "content": "..."}])
"""

from chinwag.safety.guard import (
    Evidence,
    Guard,
    GuardSession,
    StreamMonitor,
    Verdict,
    default_guard,
    looks_like_refusal,
    reward_component,
)
from chinwag.safety.policy import ACTIONS, CATEGORIES, Policy, PolicyError
from chinwag.safety.sanitize import Sanitized, sanitize

__all__ = [
    "ACTIONS", "CATEGORIES", "Evidence", "Guard", "GuardSession", "Policy", "PolicyError", "Sanitized",
    "StreamMonitor", "Verdict", "default_guard", "looks_like_refusal", "reward_component", "sanitize",
]  # fmt: skip
