"""Diameter numbers as IntEnums: commands, applications, vendors, result codes, AVP codes.

Owns every numeric constant of the stack. Sources: RFC 6733 (base protocol,
sections 3, 4.5, 5, 7.1), RFC 7683 (DOIC AVPs 621-627), RFC 7944 (DRMP) and
3GPP TS 29.272 V16.7 (S13: section 7.1.8 application id, 7.2.19-20 command,
Table 7.3.1/1 AVPs, 7.4.3 experimental result codes).
"""

from __future__ import annotations

from enum import IntEnum, IntFlag

DIAMETER_VERSION = 1
HEADER_LEN = 20
AVP_HEADER_LEN = 8
AVP_VENDOR_HEADER_LEN = 12
MAX_MESSAGE_LEN = 0xFFFFFF


class CmdFlag(IntFlag):
    """Header flag bits (RFC 6733 section 3)."""

    REQUEST = 0x80
    PROXIABLE = 0x40
    ERROR = 0x20
    RETRANSMIT = 0x10


class AvpFlag(IntFlag):
    """AVP flag bits (RFC 6733 section 4.1); the low five bits are reserved."""

    VENDOR = 0x80
    MANDATORY = 0x40
    PROTECTED = 0x20


AVP_RESERVED_BITS = 0x1F
# the same bits as plain ints for the decoder: `int & IntFlag` goes through IntFlag.__rand__
# and builds an enum member, which was half the cost of splitting a 5,000-AVP message
AVP_VENDOR_BIT = 0x80
AVP_MANDATORY_BIT = 0x40


class Command(IntEnum):
    CAPABILITIES_EXCHANGE = 257  # RFC 6733 5.3
    DEVICE_WATCHDOG = 280  # RFC 6733 5.5
    DISCONNECT_PEER = 282  # RFC 6733 5.4
    ME_IDENTITY_CHECK = 324  # TS 29.272 7.2.19


class Application(IntEnum):
    COMMON = 0  # RFC 6733 2.4: base protocol messages
    S13 = 16777252  # TS 29.272 7.1.8
    RELAY = 0xFFFFFFFF  # RFC 6733 2.4: a relay advertises this id


class Vendor(IntEnum):
    IETF = 0
    TGPP = 10415  # 3GPP


class ResultCode(IntEnum):
    """RFC 6733 section 7.1."""

    MULTI_ROUND_AUTH = 1001
    SUCCESS = 2001
    LIMITED_SUCCESS = 2002
    COMMAND_UNSUPPORTED = 3001
    UNABLE_TO_DELIVER = 3002
    REALM_NOT_SERVED = 3003
    TOO_BUSY = 3004
    LOOP_DETECTED = 3005
    REDIRECT_INDICATION = 3006
    APPLICATION_UNSUPPORTED = 3007
    INVALID_HDR_BITS = 3008
    INVALID_AVP_BITS = 3009
    UNKNOWN_PEER = 3010
    AUTHENTICATION_REJECTED = 4001
    OUT_OF_SPACE = 4002
    ELECTION_LOST = 4003
    AVP_UNSUPPORTED = 5001
    UNKNOWN_SESSION_ID = 5002
    AUTHORIZATION_REJECTED = 5003
    INVALID_AVP_VALUE = 5004
    MISSING_AVP = 5005
    RESOURCES_EXCEEDED = 5006
    CONTRADICTING_AVPS = 5007
    AVP_NOT_ALLOWED = 5008
    AVP_OCCURS_TOO_MANY_TIMES = 5009
    NO_COMMON_APPLICATION = 5010
    UNSUPPORTED_VERSION = 5011
    UNABLE_TO_COMPLY = 5012
    INVALID_BIT_IN_HEADER = 5013
    INVALID_AVP_LENGTH = 5014
    INVALID_MESSAGE_LENGTH = 5015
    INVALID_AVP_BIT_COMBO = 5016
    NO_COMMON_SECURITY = 5017


class ExperimentalResultCode(IntEnum):
    """TS 29.272 section 7.4.3 (vendor 10415)."""

    ERROR_EQUIPMENT_UNKNOWN = 5422


def is_protocol_error(code: int) -> bool:
    """3xxx results travel only in answers with the E bit (RFC 6733 7.1.3)."""
    return 3000 <= code < 4000


class AvpCode(IntEnum):
    # RFC 6733 section 4.5 (vendor 0)
    USER_NAME = 1
    PROXY_STATE = 33
    HOST_IP_ADDRESS = 257
    AUTH_APPLICATION_ID = 258
    ACCT_APPLICATION_ID = 259
    VENDOR_SPECIFIC_APPLICATION_ID = 260
    SESSION_ID = 263
    ORIGIN_HOST = 264
    SUPPORTED_VENDOR_ID = 265
    VENDOR_ID = 266
    FIRMWARE_REVISION = 267
    RESULT_CODE = 268
    PRODUCT_NAME = 269
    DISCONNECT_CAUSE = 273
    AUTH_SESSION_STATE = 277
    ORIGIN_STATE_ID = 278
    FAILED_AVP = 279
    PROXY_HOST = 280
    ERROR_MESSAGE = 281
    ROUTE_RECORD = 282
    DESTINATION_REALM = 283
    PROXY_INFO = 284
    DESTINATION_HOST = 293
    ERROR_REPORTING_HOST = 294
    ORIGIN_REALM = 296
    EXPERIMENTAL_RESULT = 297
    EXPERIMENTAL_RESULT_CODE = 298
    INBAND_SECURITY_ID = 299
    DRMP = 301  # RFC 7944
    # RFC 7683 DOIC
    OC_SUPPORTED_FEATURES = 621
    OC_FEATURE_VECTOR = 622
    OC_OLR = 623
    OC_SEQUENCE_NUMBER = 624
    OC_VALIDITY_DURATION = 625
    OC_REPORT_TYPE = 626
    OC_REDUCTION_PERCENTAGE = 627
    # TS 29.272 Table 7.3.1/1 (vendor 10415)
    TERMINAL_INFORMATION = 1401
    IMEI = 1402
    SOFTWARE_VERSION = 1403
    EQUIPMENT_STATUS = 1445
    MEID_3GPP2 = 1471


class DisconnectCause(IntEnum):
    """RFC 6733 section 5.4.3."""

    REBOOTING = 0
    BUSY = 1
    DO_NOT_WANT_TO_TALK_TO_YOU = 2


class AuthSessionState(IntEnum):
    """RFC 6733 section 8.11."""

    STATE_MAINTAINED = 0
    NO_STATE_MAINTAINED = 1


class EquipmentStatus(IntEnum):
    """TS 29.272 section 7.3.51."""

    WHITELISTED = 0
    BLACKLISTED = 1
    GREYLISTED = 2
