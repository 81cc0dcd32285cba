"""The service account's session with the OMERO server, kept alive across server
restarts and session expiry.

Every server call goes through ``ServerConnection.call``. When the server cannot be
reached the call fails at once with ``CatalogUnavailable`` and the next connection
attempt waits out an exponential backoff, so a view that polls keeps serving its last
known tree instead of hanging; a call that finds its session gone reconnects once and
retries. Sessions *as another user* (imports run as the user who wrote the data) are
made from this one with ``sudo``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any, TypeVar

import Glacier2
import Ice
import omero
import omero.clients  # noqa: F401  (registers the model types)
from omero.rtypes import unwrap

from omerofs.backends.omero.settings import OmeroSettings
from omerofs.errors import AccessDenied, CatalogUnavailable, OmerofsError, UsageError

log = logging.getLogger(__name__)
T = TypeVar("T")
ALL_GROUPS = {"omero.group": "-1"}  # query across every group the session may read
KEEPALIVE_S = 60  # seconds between keep-alive pings of every session we hold

# the session or the connection is gone: reconnect
_LOST = (
    Ice.LocalException,
    omero.SessionException,
    omero.ClientError,
    Glacier2.SessionNotExistException,
)


def connect_client(settings: OmeroSettings) -> Any:
    """A logged-in ``omero.client`` of the service account (blocking)."""
    username, password = settings.login()
    client = omero.client(settings.host, settings.port)
    try:
        client.createSession(username, password)
        client.enableKeepAlive(KEEPALIVE_S)
    except BaseException:
        client.__del__()  # omero-py's way to destroy the communicator
        raise
    return client


class ServerConnection:
    """One service-account session, reconnected with exponential backoff.

    ``connect`` makes a logged-in client (``connect_client`` for a real server);
    ``clock`` is injectable so the backoff can be tested without sleeping."""

    def __init__(
        self,
        settings: OmeroSettings,
        connect: Callable[[OmeroSettings], Any] = connect_client,
        clock: Callable[[], float] = time.monotonic,
        first_delay: float = 1.0,
        max_delay: float = 60.0,
    ) -> None:
        self.settings = settings
        self._connect = connect
        self._clock = clock
        self._first_delay = first_delay
        self._max_delay = max_delay
        self._lock = threading.RLock()
        self._client: Any = None
        self._failures = 0
        self._retry_at = 0.0
        self.last_error: str | None = None

    @property
    def where(self) -> str:
        return f"OMERO server {self.settings.host}:{self.settings.port}"

    def call(self, fn: Callable[[Any], T]) -> T:
        """Run ``fn(service_factory)``; reconnect once if the session was lost."""
        for attempt in (1, 2):
            sf = self._session()
            try:
                return fn(sf)
            except _LOST as exc:
                self._lost(exc)
                if attempt == 2:
                    raise CatalogUnavailable(f"{self.where}: {_describe(exc)}") from None
            except omero.ServerError as exc:
                raise translate(exc) from None
        raise AssertionError("unreachable")

    def _session(self) -> Any:
        with self._lock:
            if self._client is not None:
                return self._client.getSession()
            now = self._clock()
            if now < self._retry_at:
                raise CatalogUnavailable(
                    f"{self.where} unavailable ({self.last_error}); "
                    f"retrying in {self._retry_at - now:.0f} s"
                )
            try:
                self._client = self._connect(self.settings)
            except Glacier2.PermissionDeniedException as exc:
                self._failed(f"login refused: {exc.reason or 'bad credentials'}")
                raise CatalogUnavailable(f"{self.where}: {self.last_error}") from None
            except (
                Glacier2.CannotCreateSessionException,
                omero.WrappedCreateSessionException,
            ) as exc:
                # the server is up but cannot make a session now (starting, overloaded)
                self._failed(f"cannot create a session: {_describe(exc)}")
                raise CatalogUnavailable(f"{self.where}: {self.last_error}") from None
            except (*_LOST, omero.ServerError, OSError) as exc:
                self._failed(_describe(exc))
                raise CatalogUnavailable(f"{self.where}: {self.last_error}") from None
            if self._failures:
                log.info("reconnected to %s", self.where)
            self._failures, self.last_error = 0, None
            return self._client.getSession()

    def _failed(self, message: str) -> None:
        delay = min(self._max_delay, self._first_delay * 2**self._failures)
        self._failures += 1
        self._retry_at = self._clock() + delay
        self.last_error = message
        log.warning("%s: %s; next attempt in %.0f s", self.where, message, delay)

    def _lost(self, exc: BaseException) -> None:
        with self._lock:
            log.warning("%s: connection lost (%s); reconnecting", self.where, _describe(exc))
            self._close_client()

    def close(self) -> None:
        with self._lock:
            self._close_client()

    def _close_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with suppress(Exception):  # the server may be gone already
                client.closeSession()
            client.__del__()

    # -- sessions as other users ----------------------------------------------------

    @contextmanager
    def sudo(self, user: str, group: str) -> Iterator[Any]:
        """A client logged in as ``user`` in ``group``, from the service account's admin
        session (OMERO's ``--sudo``): imports are owned by the user who wrote the data."""
        uuid = self.call(lambda sf: create_sudo_session(sf, user, group))
        client = omero.client(self.settings.host, self.settings.port)
        try:
            try:
                client.joinSession(uuid)
                # Glacier2 drops a session idle for 600 s; a long local copy or hash
                # makes no calls (as omero-py's sessions plugin, which uses 300 s)
                client.enableKeepAlive(KEEPALIVE_S)
            except (*_LOST, Glacier2.CannotCreateSessionException) as exc:
                raise CatalogUnavailable(f"{self.where}: {_describe(exc)}") from None
            yield client
        finally:
            with suppress(Exception):
                client.killSession()
            client.__del__()


def create_sudo_session(sf: Any, user: str, group: str) -> str:
    """A session of ``user`` in ``group`` made by an admin, the way omero-py's own
    ``login --sudo`` does (``omero/util/sessions.py``): no time-to-live (0 — an absolute
    one would end a long import midway, ``SessionCache``) and the admin session's own
    time-to-idle. Returns its uuid."""
    service = sf.getSessionService()
    own = service.getSession(sf.ice_getIdentity().name)
    principal = omero.sys.Principal()
    principal.name, principal.group, principal.eventType = user, group, "User"
    session = service.createSessionWithTimeouts(principal, 0, unwrap(own.getTimeToIdle()))
    return str(unwrap(session.getUuid()))


def translate(exc: BaseException) -> OmerofsError:
    """One OMERO server error -> the omerofs error (and so the errno) it means."""
    message = getattr(exc, "message", "") or _describe(exc)
    if isinstance(exc, omero.SecurityViolation):
        return AccessDenied(f"OMERO refused: {message}")
    if isinstance(exc, omero.ValidationException | omero.ApiUsageException):
        return UsageError(f"OMERO: {message}")
    return CatalogUnavailable(f"OMERO: {message}")


def _describe(exc: BaseException) -> str:
    name = type(exc).__name__
    detail = getattr(exc, "message", None) or getattr(exc, "reason", None) or str(exc)
    detail = " ".join(str(detail).split())
    if not detail:
        return name
    return detail if name in detail else f"{name}: {detail}"
