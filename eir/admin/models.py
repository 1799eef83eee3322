"""The admin API's request and response bodies (pydantic): validation and the OpenAPI schemas.

Owns the shapes the API promises: every response an endpoint gives is one
of these models (or `Problem`, RFC 9457 with TS 29.571 ``invalidParams``),
so the served OpenAPI document is the contract schemathesis checks the
server against. Times are ISO 8601 UTC strings as the registry stores them;
IMEIs are the 14 digits the registry keys on (POLICY.md rule 1).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

IMEI_PATTERN = r"^[0-9]{14,15}$"
IMSI_PATTERN = r"^[0-9]{5,15}$"
SV_PATTERN = r"^[0-9]{2}$"
# printable, no control characters (lifecycle._evidence checks the rest and names the field)
Evidence = Annotated[str, Field(min_length=1, max_length=128, examples=["case 2025/1234"])]
Note = Annotated[str, Field(max_length=1000)]
ListName = Literal["white", "grey", "black"]
StatusName = Literal["WHITELISTED", "BLACKLISTED", "GREYLISTED", "UNKNOWN"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InvalidParam(_Model):
    param: str
    reason: str | None = None


class Problem(_Model):
    """RFC 9457 problem details (TS 29.571 5.2.4.1 ProblemDetails)."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    cause: str | None = None
    invalidParams: list[InvalidParam] | None = None  # TS 29.571 spells it so


class Health(_Model):
    status: Literal["ok"] = "ok"


class Ready(_Model):
    ready: bool
    registry_version: int | None = None
    snapshot_age_seconds: float | None = None
    detail: str | None = None


# -- lists -------------------------------------------------------------------------------


class _Listed(_Model):
    """What every row of the lists has: why, who asked, since when."""

    reason: str
    source: str | None = None
    since: str
    note: str | None = None


class Entry(_Listed):
    """One list entry (a single IMEI)."""

    imei: str
    list: ListName
    grace_until: str | None = None
    evidence: str | None = None


class PairBrief(_Listed):
    """An exception pair of the IMEI at hand."""

    imsi: str


class Pair(PairBrief):
    """An exception pair: (IMEI, IMSI) allowed despite a block (POLICY.md step 2)."""

    imei: str
    evidence: str | None = None


_NEXT = "pass as `after` for the next page"


class EntryPage(_Model):
    items: list[Entry]
    next_after: str | None = Field(None, description=_NEXT)


class PairPage(_Model):
    items: list[Pair]
    next_after: str | None = Field(None, description=_NEXT)


class Observation(_Model):
    imsi: str | None = None
    operator: str
    first_seen: str
    last_seen: str


class DecisionNow(_Model):
    at: str
    status: StatusName
    reason: str
    rule: str | None = None
    deadline: str | None = None


class HistoryItem(_Model):
    seq: int
    at: str
    action: str
    actor: str | None = None
    evidence: str | None = None
    summary: Any = None


class RangeCover(_Model):
    first: str
    last: str
    sv: str | None = None
    list: str
    reason: str


# the class below has a field named "list": its other fields' types are named here
_Pairs = list[PairBrief]
_Observations = list[Observation]
_History = list[HistoryItem]
_Ranges = list[RangeCover]
_Dicts = list[dict[str, Any]]


class EntryView(_Model):
    """One IMEI as ``eir registry show`` prints it. Fields holding IMSIs are null for a
    role that may not see them, and an operator sees only its own subscribers' rows."""

    imei: str
    list: ListName | None = None
    reason: str | None = None
    source: str | None = None
    since: str | None = None
    note: str | None = None
    pairs: _Pairs | None = None
    decision_now: DecisionNow
    observations: _Observations | None = None
    history: _History
    range_entries: _Ranges
    pending_deadlines: _Dicts | None = None
    notifications: _Dicts | None = None


# -- lifecycle ---------------------------------------------------------------------------


class LegaliseBody(_Model):
    evidence: Evidence
    imsi: str | None = Field(None, pattern=IMSI_PATTERN,
                             description="also register the owner's (IMEI, IMSI) pair")
    note: Note | None = None


class ReportBody(_Model):
    reason: Literal["stolen", "lost"]
    evidence: Evidence
    note: Note | None = None


class RecoveredBody(_Model):
    evidence: Evidence


class PairBody(_Model):
    evidence: Evidence


class Change(_Model):
    """A change made: its audit record's sequence number and the entry after it."""

    seq: int
    action: str
    actor: str
    imei: str
    entry: Entry | None = None
    pairs: list[PairBrief] | None = None


# -- imports -----------------------------------------------------------------------------


class ImportJob(_Model):
    id: str
    state: Literal["running", "done", "failed"]
    actor: str
    created: str
    finished: str | None = None
    rows_done: int = 0
    bytes_done: int = 0
    bytes_total: int = 0
    percent: float = 0.0
    options: dict[str, Any] = Field(default_factory=dict)
    result: dict[str, Any] | None = None
    error: Problem | None = None


# -- audit -------------------------------------------------------------------------------


class AuditRecord(_Model):
    seq: int
    at: str
    action: str
    count: int
    actor: str | None = None
    target: str | None = None
    evidence: str | None = None
    summary: Any = None
    hash: str | None = None


class AuditPage(_Model):
    items: list[AuditRecord]
    next_after: int | None = Field(None, description=_NEXT)


class AuditVerify(_Model):
    ok: bool
    records: int
    head: str
    broken_seq: int | None = None
    problem: str | None = None
    expected_head: str | None = None


# -- decisions and previews --------------------------------------------------------------


class DecisionEntry(_Model):
    list: str
    reason: str
    since: str | None = None


class DecisionFacts(_Model):
    entry: DecisionEntry | None = None
    paired_exception: bool
    roamer: bool
    tac_known: bool | None = None
    device_class: str | None = None
    first_home_sighting: str | None = None
    # how many IMSIs used the IMEI, all networks together: null for an operator, whom the
    # other networks' subscribers are none of its business
    imsis_seen: int | None = None


class DecisionOut(_Model):
    """What a check would be answered (``eir decide``): status, reason and rule."""

    imei: str
    imsi: str | None = None
    sv: str | None = None
    at: str
    status: StatusName
    reason: str
    rule: str | None = None
    list: str | None = None
    detail: str | None = None
    deadline: str | None = None
    facts: DecisionFacts


class PreviewBody(_Model):
    """Settings to preview, as the TOML file's tables (e.g. ``{"policy": {"grace_days":
    30}}``), applied over the running settings."""

    config: dict[str, dict[str, Any]] = Field(
        examples=[{"policy": {"grace_days": 30}}])
    at: str | None = Field(None, description="ISO 8601 time (default now)")


class OperatorImpact(_Model):
    devices: int
    would_change: int
    transitions: dict[str, int]


class PreviewOut(_Model):
    at: str
    devices_checked: int
    seconds: float
    by_operator: dict[str, OperatorImpact]


class Peer(_Model):
    origin_host: str
    connected: bool


class PeerList(_Model):
    items: list[Peer]
