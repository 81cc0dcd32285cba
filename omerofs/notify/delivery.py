"""How a delivery ends: accepted, failed for now (retried with backoff), or refused for
good (retrying cannot help, e.g. the relay says the mailbox does not exist)."""

from __future__ import annotations

from omerofs.errors import OmerofsError


class DeliveryFailed(OmerofsError):
    """A channel did not take a message; ``permanent`` when retrying cannot help."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


def backoff(attempts: int, initial: float, maximum: float) -> float:
    """Seconds before the next try after ``attempts`` failed ones: doubling, capped."""
    return min(maximum, initial * 2.0 ** max(0, min(attempts - 1, 60)))
