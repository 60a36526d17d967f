"""Role-based access for every HTTP API: bearer tokens from the environment.

Tokens are kept only as SHA-256 digests and compared with
``hmac.compare_digest`` against every configured credential, so the time taken
does not depend on which (if any) matched. A credential also names the clinics
it opens; ``Principal.require_clinic`` is the object-level check.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from fastapi import HTTPException, Request, status

from shared.errors import NotFound
from shared.idempotency import bind_caller
from shared.settings import Credential, Role, hash_token


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the credential's name, role and clinics."""

    name: str
    role: Role
    clinics: tuple[str, ...]

    def allows_clinic(self, clinic_id: str) -> bool:
        return "*" in self.clinics or clinic_id in self.clinics

    def require_clinic(self, clinic_id: str) -> None:
        """Refuse (403) when this credential does not open ``clinic_id``."""
        if not self.allows_clinic(clinic_id):
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                detail=f"credential {self.name!r} has no access to clinic {clinic_id!r}",
            )


class Authenticator:
    """Resolves a bearer token to a ``Principal``."""

    def __init__(self, credentials: Iterable[Credential]) -> None:
        self._credentials = [
            (bytes.fromhex(c.token_sha256), Principal(c.name, c.role, tuple(c.clinics)))
            for c in credentials
        ]

    def authenticate(self, token: str) -> Principal | None:
        digest = bytes.fromhex(hash_token(token))
        found: Principal | None = None
        for expected, principal in self._credentials:
            if hmac.compare_digest(digest, expected):
                found = principal
        return found


def bearer_token(request: Request) -> str | None:
    """The bearer token from ``Authorization`` (or ``?access_token=`` for EventSource/SSE)."""
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip() or None
    return request.query_params.get("access_token") or None


def require_known_clinic(request: Request) -> None:
    """A path naming a clinic the deployment does not serve is 404 (``known_clinics``
    on the app's state: the clinics of ``CLINICFLOW_CLINICS``; none configured, any
    clinic id is served, as in development). Checked after the token, so that the
    answer tells nothing to whoever has none."""
    clinic_id = request.path_params.get("clinic_id")
    known: frozenset[str] = getattr(request.app.state, "known_clinics", frozenset())
    if clinic_id is not None and known and clinic_id not in known:
        raise NotFound(f"no clinic {clinic_id!r} here: this deployment serves the clinics "
                       "of CLINICFLOW_CLINICS", code="unknown_clinic")


def require_role(*roles: Role) -> Callable[[Request], Awaitable[Principal]]:
    """FastAPI dependency: 401 without a valid token, 403 for a role not in ``roles``."""
    allowed = frozenset(roles)

    async def dependency(request: Request) -> Principal:
        authenticator: Authenticator = request.app.state.authenticator
        token = bearer_token(request)
        if token is None:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                detail="missing bearer token (Authorization: Bearer <token>)",
                headers={"WWW-Authenticate": "Bearer"},
            )
        principal = authenticator.authenticate(token)
        if principal is None:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                detail="unknown or revoked token",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if principal.role not in allowed:
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                detail=f"role {principal.role!r} may not do this "
                f"(allowed: {', '.join(sorted(allowed))})",
            )
        require_known_clinic(request)
        bind_caller(principal.role, principal.name)  # its Idempotency-Keys are its own
        return principal

    return dependency
