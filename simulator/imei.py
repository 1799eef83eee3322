"""Identity construction for simulated handsets: IMEIs, TACs, IMSIs and realms.

Owns the simulator's *own* identity arithmetic, written independently of
``eir.policy.model`` (DESIGN.md 3.5: the simulator must be able to disagree
with the EIR, so it shares none of its code):

- the IMEI check digit, TS 23.003 Annex B (the Luhn scheme), with tables
  that make one check digit two lookups and a sum, because a population of a
  million handsets computes a million of them;
- the IMEI layout, TS 23.003 6.2.1: TAC (8 digits, the first two the GSMA
  reporting body) + serial number (6) + check digit (1) = 15 digits; on S13
  the IMEI AVP carries 14 or 15 of them (TS 29.272 7.3.4, PROTOCOL.md 2.4);
- the IMSI layout, TS 23.003 2.2: MCC (3) + MNC (2 or 3) + MSIN, 15 digits;
- the EPC home network realm, TS 23.003 19.2:
  ``epc.mnc<MNC as 3 digits>.mcc<MCC>.3gppnetwork.org``;
- the networks a Kazakh population meets: the home operators of MCC 401 with
  plausible market shares, and the visited-from networks of inbound roamers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "HOME_OPERATORS",
    "ROAMING_NETWORKS",
    "SUSPECT_REPORTING_BODIES",
    "Network",
    "check_digit",
    "check_digit_fast",
    "imsi",
    "is_valid_imei15",
    "realm",
    "serial_part",
    "tac_part",
    "with_check_digit",
]


def _digit_sum_doubled(d: int) -> int:
    # Annex B: a doubled digit contributes the sum of the product's digits.
    p = 2 * d
    return p // 10 + p % 10


def check_digit(body: str) -> int:
    """The check digit of a 14-digit IMEI body (TS 23.003 Annex B).

    Counting positions from 1 at the left, the digits at even positions are
    doubled (products contribute their digit sum), everything is added, and
    the check digit brings the total up to a multiple of ten.
    """
    if len(body) != 14 or not (body.isascii() and body.isdigit()):
        raise ValueError(f"an IMEI body is 14 decimal digits, not {body!r}")
    total = 0
    for pos, ch in enumerate(body, start=1):
        d = int(ch)
        total += _digit_sum_doubled(d) if pos % 2 == 0 else d
    return -total % 10


def with_check_digit(body: str) -> str:
    """The 15-digit IMEI: the body and its check digit."""
    return body + str(check_digit(body))


def is_valid_imei15(imei: str) -> bool:
    """Whether a 15-character string is 15 digits ending in their check digit."""
    return (len(imei) == 15 and imei.isascii() and imei.isdigit()
            and check_digit(imei[:14]) == int(imei[14]))


# Precomputed contributions to the Annex B sum, so that a check digit costs
# three lookups. Positions 1-8 are the TAC; positions 9-14 the serial,
# split into a high half (positions 9-11: 10 doubled) and a low half
# (positions 12-14: 12 and 14 doubled).
def _chunk_table(doubled: tuple[bool, bool, bool]) -> tuple[int, ...]:
    table = []
    for n in range(1000):
        digits = (n // 100, n // 10 % 10, n % 10)
        table.append(sum(_digit_sum_doubled(d) if dbl else d
                         for d, dbl in zip(digits, doubled, strict=True)))
    return tuple(table)


_SERIAL_HI: Final = _chunk_table((False, True, False))
_SERIAL_LO: Final = _chunk_table((True, False, True))


def tac_part(tac: int) -> int:
    """The TAC's contribution (positions 1-8) to the Annex B sum; compute once per TAC."""
    if not 0 <= tac < 10**8:
        raise ValueError(f"a TAC is 8 decimal digits, not {tac}")
    s = f"{tac:08d}"
    return sum(_digit_sum_doubled(int(c)) if i % 2 else int(c) for i, c in enumerate(s))


def serial_part(serial: int) -> int:
    """The serial number's contribution (positions 9-14) to the Annex B sum."""
    return _SERIAL_HI[serial // 1000] + _SERIAL_LO[serial % 1000]


def check_digit_fast(tac_sum: int, serial: int) -> int:
    """`check_digit` of TAC + serial, given ``tac_part(tac)``; serial in 0..999999."""
    return -(tac_sum + _SERIAL_HI[serial // 1000] + _SERIAL_LO[serial % 1000]) % 10


# GSMA reporting bodies whose allocations are test ranges (PROTOCOL.md 4:
# RBI 00 and 02-09). Real handsets never carry them, so the TAC table avoids
# them; what an EIR does with them is policy (POLICY.md rule 1).
SUSPECT_REPORTING_BODIES: Final = frozenset({"00", "02", "03", "04", "05", "06", "07", "08",
                                             "09"})


@dataclass(frozen=True, slots=True)
class Network:
    """A mobile network: MCC, MNC (as dialled: 2 or 3 digits), name, share of its population."""

    mcc: str
    mnc: str
    name: str
    share: float
    realm: str = field(init=False, compare=False)
    plmn: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        # Computed once: a population asks for them once per handset.
        object.__setattr__(self, "realm", realm(self.mcc, self.mnc))
        object.__setattr__(self, "plmn", self.mcc + self.mnc)


def realm(mcc: str, mnc: str) -> str:
    """The EPC home network realm (TS 23.003 19.2): the MNC is padded to 3 digits."""
    return f"epc.mnc{int(mnc):03d}.mcc{mcc}.3gppnetwork.org"


def imsi(plmn: str, msin: int) -> str:
    """A 15-digit IMSI (TS 23.003 2.2): MCC + MNC + an MSIN filling the rest."""
    width = 15 - len(plmn)
    if not 0 <= msin < 10**width:
        raise ValueError(f"MSIN {msin} does not fit {width} digits after {plmn}")
    return f"{plmn}{msin:0{width}d}"


# Kazakhstan's networks (MCC 401). The shares are invented but plausible:
# two large incumbents and two smaller networks of one group.
HOME_OPERATORS: Final[tuple[Network, ...]] = (
    Network("401", "01", "Beeline", 0.38),
    Network("401", "02", "Kcell", 0.32),
    Network("401", "07", "Altel", 0.12),
    Network("401", "77", "Tele2", 0.18),
)

# Where inbound roamers come from (invented shares, neighbours first). One
# three-digit MNC (310 260) keeps the MSIN-width arithmetic honest.
ROAMING_NETWORKS: Final[tuple[Network, ...]] = (
    Network("250", "01", "MTS Russia", 0.16),
    Network("250", "02", "MegaFon", 0.12),
    Network("250", "99", "Beeline Russia", 0.08),
    Network("257", "01", "A1 Belarus", 0.04),
    Network("257", "02", "MTS Belarus", 0.03),
    Network("434", "05", "Ucell", 0.10),
    Network("437", "01", "Beeline Kyrgyzstan", 0.08),
    Network("460", "00", "China Mobile", 0.13),
    Network("286", "01", "Turkcell", 0.08),
    Network("262", "01", "Telekom Deutschland", 0.06),
    Network("310", "260", "T-Mobile USA", 0.07),
    Network("425", "01", "Partner Israel", 0.05),
)
