"""relayctl: run the Relay job store's Redis key-schema migration safely."""

__version__ = "0.1.0"
