"""ACLs that deny the running worker its topics or its group: not ready and retried, never a crash loop.

An operator who revokes (or has not yet granted) the worker's READ on a request topic or on its
consumer group makes every poll raise `TopicAuthorizationFailedError` or
`GroupAuthorizationFailedError` (aiokafka keeps the group membership and the fetch positions; the
records of other partitions already fetched are returned before the error). Exiting would turn that
into a crash loop that reloads the model on every restart, although the fix (granting the ACL) needs
no restart. So the worker stays up: one `kafka.access_denied` error line per episode, /readyz 503
naming what is denied, polls retried with jittered backoff (1 s doubling to 30 s), nothing committed
past an unprocessed record, and `kafka.access_restored` once polls have succeeded again for
`clear_after_s` (a single clean poll between two denials does not end an episode).

The first denial after a wait is polled again at once: aiokafka fetches again as soon as an error is
consumed, so the error a poll raises after a wait was fetched before the wait began. Without the
second look, a restored ACL would be seen one whole backoff (up to 30 s) late.

Refused credentials (SASL authentication) are not this: they stop start-up (`KafkaAccessDenied`).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog
from aiokafka.errors import GroupAuthorizationFailedError, TopicAuthorizationFailedError

from consumer.backoff import Backoff
from consumer.http.metrics import WorkerMetrics
from consumer.http.readiness import WorkerState

log = structlog.get_logger("klein_edit.worker")

# What an ACL denies a member that is already authenticated: retried, not fatal.
AUTHORIZATION_ERRORS = (TopicAuthorizationFailedError, GroupAuthorizationFailedError)
PROBLEM = "kafka_access"
# Polls must succeed this long (seconds) after the last denial before the episode ends.
CLEAR_AFTER_S = 3.0


def _what_is_denied(exc: BaseException) -> str:
    """'READ on topic(s) a, b' or 'the consumer group g', from the exception aiokafka raised."""
    names = sorted(_names(exc.args[0] if exc.args else ""))
    listed = ", ".join(names) or "?"
    if isinstance(exc, GroupAuthorizationFailedError):
        return f"access to the consumer group {listed}"
    return f"access to topic(s) {listed}"


def _names(arg: object) -> set[str]:
    if isinstance(arg, set | frozenset | list | tuple):
        return {str(item) for item in arg}
    return {str(arg)} if arg else set()


class AccessWatch:
    """The episode state of authorization failures while consuming (one per worker).

    `denied(exc)` after a poll raised one of `AUTHORIZATION_ERRORS`: returns the delay (seconds) to
    wait before the next poll. `polled()` after a poll that did not. `bootstrap` and `max_delay_s`
    (keep it under `max_poll_interval_ms`, or aiokafka leaves the group) come from the settings.
    """

    def __init__(
        self,
        state: WorkerState,
        metrics: WorkerMetrics,
        *,
        bootstrap: str,
        max_delay_s: float = 30.0,
        clear_after_s: float = CLEAR_AFTER_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._state = state
        self._metrics = metrics
        self._bootstrap = bootstrap
        self._backoff = Backoff(min(1.0, max_delay_s), max_delay_s)
        self._clear_after_s = clear_after_s
        self._clock = clock
        self._denied_since: float | None = None  # the episode's start; None while access is fine
        self._waited = False  # the last denial was answered with a wait: the next error may be stale
        self._fine_since: float | None = None  # the first clean poll after the last denial
        self.denials = 0  # polls denied in this episode

    @property
    def denied_now(self) -> bool:
        return self._denied_since is not None

    def denied(self, exc: BaseException) -> float:
        """Seconds to wait before the next poll: 0 (poll again now) for the first error after a wait."""
        now = self._clock()
        what = _what_is_denied(exc)
        self._fine_since = None
        self.denials += 1
        self._metrics.kafka_access_denied.set(1)
        problem = (
            f"Kafka at {self._bootstrap} denies this worker {what} ({type(exc).__name__}): grant the "
            "ACLs in docs/operations.md (Kafka ACLs); retrying"
        )
        if self._denied_since is None:
            self._denied_since = now
            log.error(
                "kafka.access_denied",
                denied=what,
                error=type(exc).__name__,
                bootstrap=self._bootstrap,
                hint="grant the ACLs in docs/operations.md (Kafka ACLs); the worker retries and resumes",
            )
        self._state.problems[PROBLEM] = problem
        if self._waited:
            self._waited = False
            return 0.0
        self._waited = True
        return self._backoff.next()

    def polled(self) -> None:
        self._waited = False
        if self._denied_since is None:
            return
        now = self._clock()
        if self._fine_since is None:
            self._fine_since = now
        if now - self._fine_since < self._clear_after_s:
            return
        log.info(
            "kafka.access_restored",
            denied_s=round(now - self._denied_since, 1),
            denied_polls=self.denials,
        )
        self._state.problems.pop(PROBLEM, None)
        self._metrics.kafka_access_denied.set(0)
        self._denied_since = self._fine_since = None
        self.denials = 0
        self._backoff.reset()
