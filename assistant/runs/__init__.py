"""Runs: specs, runners (Docker, local process), the monitor, the queue and reports."""
