"""Devices: profiles as data, latency estimation, benchmark runners, budget checks."""
