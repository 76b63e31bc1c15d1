"""Matomo's own programs (import_logs.py, console core:archive): argv in, outcome out."""
