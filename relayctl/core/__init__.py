"""Everything that talks to Redis or computes. No UI imports here."""
