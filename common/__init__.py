"""What two or more ldpo stages share: stores, labels, the CLI base, metrics."""

__version__ = "0.1.0"
