"""Who may call the API: bearer tokens, stored only as SHA-256 hashes, each with a role and the scopes it covers.

Roles: a national operator sees and steers everything; a provincial or industry operator only their
provinces or industries; a tenant only their own tasks; an analyst reads everything and changes nothing.
Tokens are long random strings (`suanwang token new`), so one unsalted SHA-256 is enough to keep a stolen
tokens file useless.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from suanwang.dispatcher.tiers import NATIONAL, Scope
from suanwang.errors import SuanwangError
from suanwang.settings import Settings
from suanwang.topology import Network

Role = Literal["national_operator", "provincial_operator", "industry_operator", "tenant", "analyst"]
ROLES: tuple[Role, ...] = Role.__args__  # type: ignore[attr-defined]
TOKEN_PREFIX = "sw_"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


class TokenEntry(BaseModel):
    """One entry of the tokens file: a holder, their role and scopes, and their token's hash."""

    model_config = {"extra": "forbid"}

    name: str = Field(min_length=1)
    role: Role
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    provinces: list[str] = []
    industries: list[str] = []
    tenant: str | None = None

    @model_validator(mode="after")
    def _scoped_as_the_role_needs(self) -> TokenEntry:
        needs = {"provincial_operator": "provinces", "industry_operator": "industries", "tenant": "tenant"}
        for role, field in needs.items():
            if bool(getattr(self, field)) != (self.role == role):
                need = "required" if self.role == role else "not allowed"
                raise ValueError(f"{field} is {need} for role {self.role}")
        return self


class TokensFile(BaseModel):
    model_config = {"extra": "forbid"}

    tokens: list[TokenEntry]


@dataclass(frozen=True)
class Principal:
    """The caller of one request."""

    name: str
    role: Role
    provinces: tuple[str, ...] = ()
    industries: tuple[str, ...] = ()
    tenant: str | None = None

    @property
    def everywhere(self) -> bool:
        return self.role in ("national_operator", "analyst")

    def scopes(self) -> list[Scope]:
        """The scopes this caller may look at, the first being their default."""
        if self.everywhere:
            return [Scope(NATIONAL)]
        return [Scope("province", p) for p in self.provinces] + [Scope("industry", i) for i in self.industries]

    def may_see(self, scope: Scope) -> bool:
        return self.everywhere or scope in self.scopes()


ANONYMOUS = Principal("anonymous", "national_operator")  # only when the API is open (no tokens configured)


class Tokens:
    """The configured tokens, looked up by hash."""

    def __init__(self, entries: list[TokenEntry], network: Network) -> None:
        self._by_hash: dict[str, Principal] = {}
        for entry in entries:
            for province in entry.provinces:
                if province not in network.provinces:
                    raise SuanwangError(f"token {entry.name!r}: no province {province!r}")
            for industry in entry.industries:
                if industry not in network.industries:
                    raise SuanwangError(f"token {entry.name!r}: no industry {industry!r}")
            if entry.sha256 in self._by_hash:
                raise SuanwangError(f"token {entry.name!r} has the same hash as {self._by_hash[entry.sha256].name!r}")
            self._by_hash[entry.sha256] = Principal(
                entry.name, entry.role, tuple(entry.provinces), tuple(entry.industries), entry.tenant
            )

    def __len__(self) -> int:
        return len(self._by_hash)

    def principal(self, token: str) -> Principal | None:
        return self._by_hash.get(hash_token(token))


def load_tokens(settings: Settings, network: Network) -> Tokens | None:
    """Tokens from SUANWANG_API_TOKENS (YAML text) or SUANWANG_API_TOKENS_FILE; None when neither is set."""
    if settings.api_tokens is not None:
        text, source = settings.api_tokens.get_secret_value(), "SUANWANG_API_TOKENS"
    elif settings.api_tokens_file is not None:
        try:
            text, source = settings.api_tokens_file.read_text(encoding="utf-8"), str(settings.api_tokens_file)
        except OSError as exc:
            raise SuanwangError(f"SUANWANG_API_TOKENS_FILE={str(settings.api_tokens_file)!r}: {exc.strerror}") from None
    else:
        return None
    try:
        parsed = TokensFile.model_validate(yaml.safe_load(text))
    except (yaml.YAMLError, ValidationError) as exc:
        detail = exc.errors()[0] if isinstance(exc, ValidationError) else None
        where = ".".join(map(str, detail["loc"])) if detail else ""
        raise SuanwangError(f"{source}: {where + ': ' if where else ''}{detail['msg'] if detail else exc}") from None
    return Tokens(parsed.tokens, network)


def token_entry_yaml(name: str, role: Role, token: str, network: Network, **scopes: list[str] | str | None) -> str:
    """The tokens-file entry for a new token (its hash only), checked as the server will check it."""
    entry = TokenEntry(name=name, role=role, sha256=hash_token(token), **{k: v for k, v in scopes.items() if v})
    Tokens([entry], network)
    return yaml.safe_dump([entry.model_dump(exclude_defaults=True)], allow_unicode=True, sort_keys=False)
