"""Bearer tokens: owner tokens open every endpoint, read tokens the read endpoints.

A presented token is compared with every configured token, each in constant time and
without stopping at a match, so the time taken says neither whether nor which token
matched. Both sides are hashed first, so the comparison does not depend on their lengths
either. Tokens never appear in a log line, an error or a response.
"""

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum
from typing import Annotated

from fastapi import HTTPException, Request, Security, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

bearer = HTTPBearer(
    auto_error=False,
    description="An owner token (SMART_RETENTION_OWNER_TOKENS) or, for the read endpoints, "
    "a read token (SMART_RETENTION_READ_TOKENS).",
)


class Role(IntEnum):
    READER = 1
    OWNER = 2


@dataclass(frozen=True, slots=True)
class TokenSet:
    owner: tuple[bytes, ...]
    read: tuple[bytes, ...]

    @classmethod
    def of(cls, owner_tokens: Iterable[str], read_tokens: Iterable[str]) -> "TokenSet":
        return cls(tuple(map(_digest, owner_tokens)), tuple(map(_digest, read_tokens)))

    def role_of(self, token: str) -> Role | None:
        presented = _digest(token)
        is_owner = _matches_any(presented, self.owner)
        is_reader = _matches_any(presented, self.read)
        if is_owner:
            return Role.OWNER
        return Role.READER if is_reader else None


Credentials = Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]

# The checks below hash and compare and never block, so they are `async`: FastAPI runs
# them on the event loop instead of handing each to a worker thread.


async def require_reader(request: Request, credentials: Credentials) -> Role:
    return _role(request, credentials)


async def require_owner(request: Request, credentials: Credentials) -> Role:
    role = _role(request, credentials)
    if role is not Role.OWNER:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this endpoint needs an owner token")
    return role


def _role(request: Request, credentials: HTTPAuthorizationCredentials | None) -> Role:
    if credentials is None or not credentials.credentials.strip():
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing or malformed Authorization header; expected 'Bearer <token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    tokens: TokenSet = request.app.state.tokens
    role = tokens.role_of(credentials.credentials)
    if role is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "the bearer token is not valid",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )
    return role


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def _matches_any(presented: bytes, known: tuple[bytes, ...]) -> bool:
    found = False
    for token in known:
        # No early exit: every token is compared whatever matched before.
        found |= hmac.compare_digest(presented, token)
    return found
