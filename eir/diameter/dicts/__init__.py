"""Dictionary data: the base protocol (RFC 6733) and S13 (TS 29.272)."""
