"""Equipment Identity Register: S13 Diameter server and national device registry."""

__version__ = "0.1.0"
