"""The materialization DB: views, input positions, outbox and request tracking per service."""
