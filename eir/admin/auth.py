"""Who calls the admin API: bearer tokens, their roles and networks, and what each role may do.

Owns the token file (``admin.tokens_file``) and the role table. A token is a
random string shown once by ``eir admin token``; the file keeps only its
SHA-256, so a copy of the file lets nobody in. TOML::

    [[token]]
    name = "alice"          # the identity: the audit trail's actor is "api:alice"
    role = "ministry"       # ministry, operator, police or auditor
    sha256 = "9f86d08..."   # SHA-256 (hex) of the token
    networks = ["40101"]    # operator only: its MCC+MNC codes (TS 23.003 2.2)

or JSON with the same keys: ``{"token": [{"name": ..., ...}, ...]}``.

Reload: the file's identity (inode, size, mtime) is checked at most once a
second, on a request, and a changed file is read again, so a token added by
``eir admin token`` or removed by hand works (or stops working) within a
second, with no signal. SIGHUP is not used: it belongs to the node's
settings (`eir.app.apply_reload`). A file that has become unreadable or
invalid keeps the tokens in force and logs the error once per change: a typo
must neither lock every caller out nor let anyone in. At start a bad file is
a ConfigError naming ``admin.tokens_file``.

Roles (issue 7): ``ministry`` may do everything; ``operator`` reads the lists
and decisions, reads the observations of its own subscribers (IMSIs whose
MCC+MNC is one of its networks) and manages exception pairs of those IMSIs
only; ``police`` reports stolen or lost devices and their recovery, and
reads the entry of an IMEI to do so (no IMSIs); ``auditor`` reads the lists
and the audit trail and verifies it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import time
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

log = logging.getLogger("eir.admin")

__all__ = ["Caller", "Perm", "Role", "TokenError", "TokenStore", "add_token", "hash_token"]

TOKEN_PREFIX: Final = "eir_"
_RECHECK_SECONDS: Final = 1.0


class Role(StrEnum):
    MINISTRY = "ministry"
    OPERATOR = "operator"
    POLICE = "police"
    AUDITOR = "auditor"


class Perm(StrEnum):
    """What an endpoint needs; the values are the words a 403 uses."""

    READ_LISTS = "list and filter the lists"
    READ_ENTRY = "read one IMEI's entry"
    OBSERVATIONS = "read observations (IMSIs)"
    LEGALISE = "legalise devices"
    REPORT = "report stolen, lost or recovered devices"
    EXCEPTIONS = "manage exception pairs"
    IMPORT = "import lists"
    AUDIT = "read and verify the audit trail"
    DECIDE = "ask for decisions"
    PREVIEW = "preview a new rule table"
    PEERS = "list the node's peers"


GRANTS: Final[dict[Role, frozenset[Perm]]] = {
    Role.MINISTRY: frozenset(Perm),
    Role.OPERATOR: frozenset({Perm.READ_LISTS, Perm.READ_ENTRY, Perm.OBSERVATIONS,
                              Perm.EXCEPTIONS, Perm.DECIDE}),
    Role.POLICE: frozenset({Perm.READ_ENTRY, Perm.REPORT}),
    Role.AUDITOR: frozenset({Perm.READ_LISTS, Perm.READ_ENTRY, Perm.AUDIT}),
}


class TokenError(ValueError):
    """The token file (or a token to add) is not valid; the message says where."""


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated caller."""

    name: str
    role: Role
    networks: tuple[str, ...] = ()

    @property
    def actor(self) -> str:
        """The identity the audit trail records."""
        return f"api:{self.name}"

    def may(self, perm: Perm) -> bool:
        return perm in GRANTS[self.role]

    @property
    def bound(self) -> bool:
        """True when the caller sees only the IMSIs of its networks (an operator)."""
        return self.role is Role.OPERATOR

    def owns(self, imsi: str | None) -> bool:
        """May this caller see or act on ``imsi``? (An operator: its MCC+MNC only.)"""
        if not self.bound:
            return True
        return imsi is not None and any(imsi.startswith(n) for n in self.networks)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _network(code: Any, where: str) -> str:
    if not (isinstance(code, str) and code.isascii() and code.isdigit() and len(code) in (5, 6)):
        raise TokenError(f"{where}: network {code!r} is not an MCC+MNC (5 or 6 digits)")
    return code


def _entry(raw: Any, where: str) -> tuple[str, Caller]:
    if not isinstance(raw, dict):
        raise TokenError(f"{where}: expected a table with name, role, sha256")
    unknown = set(raw) - {"name", "role", "sha256", "networks"}
    if unknown:
        raise TokenError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    name, role, digest = raw.get("name"), raw.get("role"), raw.get("sha256")
    if not (isinstance(name, str) and 0 < len(name) <= 64 and name.isprintable()
            and name.strip() == name):
        raise TokenError(f"{where}: name must be printable text of 1 to 64 characters")
    if role not in {r.value for r in Role}:
        raise TokenError(f"{where} ({name}): role {role!r} is not one of "
                         f"{', '.join(r.value for r in Role)}")
    if not (isinstance(digest, str) and len(digest) == 64
            and all(c in "0123456789abcdef" for c in digest)):
        raise TokenError(f"{where} ({name}): sha256 must be 64 lower-case hex digits")
    networks = raw.get("networks", [])
    if not isinstance(networks, list):
        raise TokenError(f"{where} ({name}): networks must be a list of MCC+MNC codes")
    codes = tuple(_network(n, f"{where} ({name})") for n in networks)
    if role == Role.OPERATOR and not codes:
        raise TokenError(f"{where} ({name}): an operator needs its networks (MCC+MNC)")
    if role != Role.OPERATOR and codes:
        raise TokenError(f"{where} ({name}): only an operator is bound to networks")
    return digest, Caller(name, Role(role), codes)


def parse(text: str, path: Path) -> dict[str, Caller]:
    """The file's tokens by SHA-256; TokenError names the file and the entry."""
    try:
        data: Any = (json.loads(text) if path.suffix.lower() == ".json" else
                     tomllib.loads(text))
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise TokenError(f"{path}: {exc}") from None
    entries = data.get("token", []) if isinstance(data, dict) else None
    if not isinstance(entries, list) or (isinstance(data, dict) and set(data) - {"token"}):
        raise TokenError(f"{path}: expected only [[token]] entries")
    out: dict[str, Caller] = {}
    names: set[str] = set()
    for i, raw in enumerate(entries, 1):
        digest, caller = _entry(raw, f"{path}: token {i}")
        if caller.name in names:
            raise TokenError(f"{path}: token {i}: the name {caller.name!r} is used twice "
                             "(it is the identity in the audit trail)")
        if digest in out:
            raise TokenError(f"{path}: token {i}: the same token twice")
        names.add(caller.name)
        out[digest] = caller
    return out


def _identity(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


class TokenStore:
    """The tokens of one file, read again when the file changes (module docstring)."""

    def __init__(self, path: str | os.PathLike[str],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = Path(path)
        self._clock = clock
        self._checked = 0.0
        self._seen: tuple[int, int, int] | None = None
        self._tokens: dict[str, Caller] = {}

    def load(self) -> None:
        """Read the file now; TokenError (or OSError) when it cannot be used."""
        seen = _identity(self.path)
        self._tokens = parse(self.path.read_text(encoding="utf-8"), self.path)
        self._seen = seen
        self._checked = self._clock()
        log.info("admin: %d token(s) from %s", len(self._tokens), self.path)

    def _maybe_reload(self) -> None:
        now = self._clock()
        if now - self._checked < _RECHECK_SECONDS:
            return
        self._checked = now
        seen = _identity(self.path)
        if seen == self._seen:
            return
        self._seen = seen  # logged once per change, not once per request
        try:
            tokens = parse(self.path.read_text(encoding="utf-8"), self.path)
        except (OSError, TokenError) as exc:
            log.error("admin: token file not reloaded, the %d token(s) in force stay: %s",
                      len(self._tokens), exc)
            return
        self._tokens = tokens
        log.warning("admin: token file %s changed: %d token(s) now", self.path, len(tokens))

    def caller(self, token: str) -> Caller | None:
        self._maybe_reload()
        return self._tokens.get(hash_token(token))

    def __len__(self) -> int:
        return len(self._tokens)


def add_token(path: str | os.PathLike[str], name: str, role: str,
              networks: Iterable[str] = ()) -> str:
    """Make a token, append its hash entry to the file (created 0600 if absent, else keeping
    its mode, owner and group), return it.

    The file is checked as a whole after the change (`parse`) before it is
    written, so a duplicate name or a bad network never reaches it.
    """
    p = Path(path)
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    raw: dict[str, Any] = {"name": name, "role": role, "sha256": hash_token(token)}
    nets = [n.strip() for n in networks if n.strip()]
    if nets:
        raw["networks"] = nets
    old = p.read_text(encoding="utf-8") if p.exists() else ""
    if p.suffix.lower() == ".json":
        data = json.loads(old) if old.strip() else {"token": []}
        if not isinstance(data, dict) or not isinstance(data.get("token"), list):
            raise TokenError(f"{p}: expected {{\"token\": [...]}}")
        data["token"].append(raw)
        new = json.dumps(data, indent=2) + "\n"
    else:
        # TOML basic strings take JSON's escapes; the values are checked below anyway
        block = "\n".join(f"{k} = {json.dumps(v)}" for k, v in raw.items())
        new = old + ("\n" if old and not old.endswith("\n") else "") + \
            ("\n" if old else "") + f"[[token]]\n{block}\n"
    parse(new, p)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(new)
        if p.exists():
            # the file as the operator left it: mode, and owner and group (a file given to
            # the node's group must stay readable by the node after the next token)
            st = p.stat()
            os.chmod(tmp, st.st_mode & 0o777)
            if (st.st_uid, st.st_gid) != (os.geteuid(), os.getegid()):
                os.chown(tmp, st.st_uid, st.st_gid)
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return token
