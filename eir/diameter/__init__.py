"""A Diameter stack (RFC 6733) with the S13 application (TS 29.272).

The core (constants, dictionary, codec, peer, watchdog) uses the standard
library only and does no I/O; ``transport``, ``server`` and ``client`` are
the asyncio glue. Nothing here imports from outside ``eir.diameter``.
"""
