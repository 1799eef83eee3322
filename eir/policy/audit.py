"""The audit trail: the change log as a hash chain, sealed on write and verified on demand.

Owns the hash of one audit record and the verification of the whole chain
(POLICY.md "an append-only audit trail of every list change: who, when,
why, with what evidence"). Every operation that changes the lists writes
exactly one change_log row (an import with its file's hash and counts; each
lifecycle action), and seals it in the same transaction:

    hash = SHA-256( prev_hash "\\n" canonical-JSON(seq, at, kind, count,
                    summary, actor, target, evidence) )

with prev_hash the previous row's hash (64 zeros for the first). Changing,
inserting or deleting any row breaks the hash of that row or of the next
one; rewriting the whole tail is caught by comparing the head hash with one
recorded elsewhere (``eir audit verify --expect-head``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["GENESIS", "AuditRecord", "VerifyResult", "record_hash", "verify_chain"]

GENESIS: Final = "0" * 64


@dataclass(frozen=True, slots=True)
class AuditRecord:
    seq: int
    at: str
    kind: str
    count: int
    summary: str | None  # JSON text as stored
    actor: str | None
    target: str | None
    evidence: str | None
    prev_hash: str | None = None
    hash: str | None = None

    def canonical(self) -> bytes:
        summary: Any = json.loads(self.summary) if self.summary else None
        body = {"seq": self.seq, "at": self.at, "kind": self.kind, "count": self.count,
                "summary": summary, "actor": self.actor, "target": self.target,
                "evidence": self.evidence}
        return json.dumps(body, sort_keys=True, separators=(",", ":"),
                          ensure_ascii=False).encode()


def record_hash(prev_hash: str, record: AuditRecord) -> str:
    return hashlib.sha256(prev_hash.encode() + b"\n" + record.canonical()).hexdigest()


@dataclass(frozen=True, slots=True)
class VerifyResult:
    ok: bool
    records: int
    head: str
    broken_seq: int | None = None
    problem: str | None = None


def verify_chain(records: Iterable[AuditRecord]) -> VerifyResult:
    """Check every link; stop at the first broken one and name it."""
    prev = GENESIS
    n = 0
    for rec in records:
        n += 1
        if rec.prev_hash != prev:
            return VerifyResult(False, n, prev, rec.seq,
                                f"record {rec.seq}: previous-hash link broken "
                                "(a record before it was changed, inserted or deleted)")
        try:
            expect = record_hash(prev, rec)
        except ValueError:  # json.JSONDecodeError: the stored summary is not JSON
            return VerifyResult(False, n, prev, rec.seq,
                                f"record {rec.seq}: summary is not valid JSON "
                                "(the record was changed)")
        if rec.hash != expect:
            return VerifyResult(False, n, prev, rec.seq,
                                f"record {rec.seq}: content does not match its hash "
                                "(the record was changed)")
        prev = expect
    return VerifyResult(True, n, prev)
