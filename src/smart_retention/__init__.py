"""smart-retention: keep post metrics without drowning in them."""

__version__ = "0.1.0"
