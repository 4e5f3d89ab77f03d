"""Supervision: the watchdog, its children, proofs of life, and db dbserver's start/stop/status."""
