"""Value types of the equipment policy: statuses, list names, reasons, decisions, facts.

Owns the vocabulary shared by the rule engine (`eir.policy.engine`), the
in-memory snapshot and the storage backends (`eir.policy.registry`,
`eir.policy.sqlite`), plus the IMEI/IMSI helpers they all rely on.

Spec and policy references:

- `Status` numbers are the Equipment-Status AVP values of 3GPP TS 29.272
  section 7.3.51 (WHITELISTED 0, BLACKLISTED 1, GREYLISTED 2); a decision
  with no status stands for DIAMETER_ERROR_EQUIPMENT_UNKNOWN (5422,
  TS 29.272 section 7.4.3).
- IMEI structure (TAC + serial, 14 digits, optional check digit or SVN)
  and the Luhn check digit: 3GPP TS 23.003 section 6.2 and Annex B.
- IMSI: 3GPP TS 23.003 section 2.2 (at most 15 digits).
- POLICY.md rule 1 (a 15th digit is ignored for matching, never checked)
  and the reason vocabulary of the POLICY.md rule table.

Nothing here imports Diameter or storage code; see DESIGN.md section 3.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import IntEnum, StrEnum
from typing import Final

__all__ = [
    "IMSI_MAX_DIGITS",
    "IMSI_MIN_DIGITS",
    "REASON_CODES",
    "Decision",
    "Facts",
    "ListEntry",
    "ListName",
    "Reason",
    "Sightings",
    "Status",
    "from_epoch",
    "imei_to_int",
    "imsi_key",
    "luhn_check_digit",
    "normalize_imei",
    "normalize_imsi",
    "parse_timestamp",
    "to_epoch",
    "utc_timestamp",
]


class Status(IntEnum):
    """Equipment-Status values, TS 29.272 section 7.3.51."""

    WHITELISTED = 0
    BLACKLISTED = 1
    GREYLISTED = 2


class ListName(StrEnum):
    """The lists an IMEI can be provisioned on.

    ``EXCEPTION`` is not a list an IMEI "sits on": it names the (IMEI, IMSI)
    pairs allowed despite a block (POLICY.md rule 2). It appears here because
    the CSV format uses the same ``list`` column for both.
    """

    WHITE = "white"
    GREY = "grey"
    BLACK = "black"
    EXCEPTION = "exception"


class Reason(StrEnum):
    """Reasons the engine produces or that the regime defines (POLICY.md).

    List entries may carry any reason string (a ministry may invent new ones);
    this enum only names the well-known ones so code and tests do not spell
    them by hand.
    """

    MALFORMED = "malformed"
    PAIRED_EXCEPTION = "paired_exception"
    STOLEN = "stolen"
    LOST = "lost"
    COUNTERFEIT = "counterfeit"
    ILLEGAL_IMPORT = "illegal_import"
    CLONED = "cloned"
    REGISTERED = "registered"
    LEGALISED = "legalised"
    GRANDFATHERED = "grandfathered"
    PENDING_VERIFICATION = "pending_verification"
    GRACE_EXPIRED = "grace_expired"
    UNKNOWN = "unknown"
    ROAMING_EXEMPT = "roaming_exempt"
    UNKNOWN_TAC = "unknown_tac"
    EXEMPT_CLASS = "exempt_class"
    CLONE_SUSPECTED = "clone_suspected"


REASON_CODES: Final[frozenset[str]] = frozenset(r.value for r in Reason)


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one equipment check.

    ``status`` None means the answer is the EQUIPMENT_UNKNOWN error (5422)
    rather than an Equipment-Status. ``reason`` is always set: a decision
    without its reason is not auditable (POLICY.md "Decisions"). ``list`` is
    the list whose entry decided, if any; ``detail`` is free text for logs.
    ``rule`` names the engine rule that decided (`eir.policy.engine.RULES`);
    ``deadline`` is the end of a running grace period (UTC epoch seconds),
    set on grey answers and on black answers whose grace ran out.
    """

    status: Status | None
    reason: str
    list: str | None = None
    detail: str | None = None
    rule: str | None = None
    deadline: int | None = None


@dataclass(frozen=True, slots=True)
class ListEntry:
    """What the registry knows about one IMEI for deciding: its list and reason."""

    list: ListName
    reason: str


class Sightings:
    """What the EIR's own observations say about one IMEI (POLICY.md "precise meanings").

    ``imsis`` maps each IMSI seen with the IMEI ('' when the MME sent none)
    to ``[first_seen, last_seen, home, noted]``: UTC epoch seconds, whether
    the IMSI is a home-network one (roamers start no clock and are no
    clones), and whether a grace clock was already reported for the pair.
    ``first_home`` is the earliest home-network sighting (the start of an
    implicit grace clock, and the proof of grandfathering); ``first_imsi``
    the home IMSI seen first (never clone-suspected). Both follow the rule
    "the earliest sighting wins".

    Mutable on purpose: the observation cache updates it in place on the hot
    path; the engine only reads it.
    """

    __slots__ = ("first_home", "first_imsi", "imsis")

    def __init__(self) -> None:
        self.imsis: dict[str, list[int]] = {}
        self.first_home: int | None = None
        self.first_imsi: str | None = None

    def add(self, imsi: str, first: int, last: int, home: bool) -> bool:
        """Merge one sighting (earliest first, latest last); True if the IMSI is new."""
        rec = self.imsis.get(imsi)
        new = rec is None
        if rec is None:
            self.imsis[imsi] = [first, last, int(home), 0]
        else:
            if first < rec[0]:
                rec[0] = first
            if last > rec[1]:
                rec[1] = last
        if home:
            if self.first_home is None or first < self.first_home:
                self.first_home = first
            if imsi:
                fi = self.first_imsi
                if fi is None or first < self.imsis[fi][0] or (
                    first == self.imsis[fi][0] and imsi < fi
                ):
                    self.first_imsi = imsi
        return new

    def home_imsis_since(self, t: int) -> int:
        """Distinct home IMSIs (not the empty one) last seen at or after ``t``."""
        return sum(1 for imsi, rec in self.imsis.items() if imsi and rec[2] and rec[1] >= t)

    def pair_first_seen(self, imsi: str) -> int | None:
        rec = self.imsis.get(imsi)
        return None if rec is None else rec[0]

    def __repr__(self) -> str:
        return (
            f"Sightings(first_home={self.first_home}, first_imsi={self.first_imsi!r}, "
            f"imsis={len(self.imsis)})"
        )


@dataclass(slots=True)
class Facts:
    """Everything the engine may look at for one check, gathered beforehand.

    ``imei`` is the string as received; ``imei14`` its normalized form (None
    when malformed). ``imsi`` is None when absent or not a valid IMSI.
    ``entry`` is the most specific matching list entry, with the time it was
    listed (``entry_since``) and an explicit grace end (``entry_grace_until``);
    ``pair_is_exception`` whether (imei14, imsi) is a registered exception
    pair. ``tac_known`` is None when no TAC database is loaded, otherwise
    whether the IMEI's TAC is in it, with its ``device_class`` (lower case).
    ``sightings`` is the observation history of the IMEI (None: never seen,
    or a check that does not observe). ``now`` is UTC epoch seconds: the
    engine never reads a clock.

    Not frozen: a frozen dataclass's __init__ costs several times more, and
    one of these is built per ECR.
    """

    imei: str
    imei14: str | None
    imsi: str | None = None
    software_version: str | None = None
    entry: ListEntry | None = None
    pair_is_exception: bool = False
    now: int = 0
    entry_since: int | None = None
    entry_grace_until: int | None = None
    tac_known: bool | None = None
    device_class: str | None = None
    sightings: Sightings | None = None
    operator: str | None = None


IMSI_MIN_DIGITS: Final = 5
IMSI_MAX_DIGITS: Final = 15


def normalize_imei(s: str) -> str | None:
    """Return the 14 matching digits of an IMEI, or None when malformed.

    Accepts exactly 14 or 15 ASCII decimal digits (POLICY.md rule 1). The
    15th digit may be a Luhn check digit or the tail of an IMEISV, so it is
    dropped without being checked: rejecting a bad check digit would block
    handsets whose only fault is how the MME formatted the field.
    """
    # isascii() first: str.isdigit() also accepts e.g. Arabic-Indic digits.
    if (len(s) == 14 or len(s) == 15) and s.isascii() and s.isdigit():
        return s[:14]
    return None


def normalize_imsi(s: str | None) -> str | None:
    """Return the IMSI if it is 5 to 15 ASCII decimal digits, else None.

    TS 23.003 section 2.2 caps the IMSI at 15 digits; the lower bound is
    MCC (3) + MNC (2), the shortest prefix that still identifies a network.
    """
    if s is None or not IMSI_MIN_DIGITS <= len(s) <= IMSI_MAX_DIGITS:
        return None
    return s if s.isascii() and s.isdigit() else None


def luhn_check_digit(d14: str) -> int:
    """Compute the IMEI check digit of 14 digits (TS 23.003 Annex B).

    Annex B doubles every second digit counting from the left (the 2nd,
    4th, ... 14th), adds the digits of the products and of the other digits,
    and returns the amount needed to reach the next multiple of ten.
    """
    if len(d14) != 14 or not (d14.isascii() and d14.isdigit()):
        raise ValueError(f"IMEI body must be 14 decimal digits, got {d14!r}")
    total = 0
    for i, ch in enumerate(d14):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return (10 - total % 10) % 10


def imei_to_int(d14: str) -> int:
    """Map a normalized 14-digit IMEI to the int64 key used by the snapshot.

    Fixed width makes numeric order equal to text order, so the sorted
    array and the database's text primary key agree.
    """
    if len(d14) != 14 or not (d14.isascii() and d14.isdigit()):
        raise ValueError(f"IMEI must be 14 decimal digits, got {d14!r}")
    return int(d14)


def imsi_key(imsi: str) -> int:
    """Map an IMSI to an int that keeps its leading zeros and its length.

    IMSIs vary in length and may start with 0 (test MCC 001), so plain
    int() would merge distinct IMSIs; a leading 1 keeps them apart. The
    result is below 2**51 for any 15-digit IMSI.
    """
    return int("1" + imsi)


def utc_timestamp(dt: datetime) -> str:
    """Format an aware datetime as the registry's UTC text, ``YYYY-MM-DDTHH:MM:SSZ``.

    One fixed format (seconds, 'Z') makes stored timestamps sort in time
    order as text and makes export-then-import reproduce them exactly.
    """
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError("timestamp must be timezone-aware (POLICY.md: time is UTC)")
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_timestamp(s: str) -> str:
    """Parse an ISO 8601 timestamp and return it in `utc_timestamp` form.

    A timestamp without an offset is taken as UTC, since POLICY.md keeps
    all time in UTC; fractions of a second are dropped.
    """
    return utc_timestamp(_parse_iso(s))


def to_epoch(s: str) -> int:
    """UTC epoch seconds of an ISO 8601 timestamp (no offset means UTC)."""
    return int(_parse_iso(s).timestamp())


def _parse_iso(s: str) -> datetime:
    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        raise ValueError(f"not an ISO 8601 timestamp: {s!r}") from None
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt


def from_epoch(t: float) -> str:
    """`utc_timestamp` text of UTC epoch seconds."""
    return utc_timestamp(datetime.fromtimestamp(int(t), UTC))
