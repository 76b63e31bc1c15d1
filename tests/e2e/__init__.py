"""End-to-end tests: `matomo-rt` as a real process, real signals, a real nginx and logrotate.

Shared pieces: :mod:`tests.e2e.harness` (a scratch Matomo with the test doubles, the service as a
subprocess, waiting on observable conditions) and :mod:`tests.e2e.nginx` (nginx on a loopback
port with the contrib log_format, requests, logrotate configs derived from contrib/).
"""
