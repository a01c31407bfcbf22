"""The driver's benchmark suite (issues 5, 12 and 13), run with `make benchmark`, never by pytest.

It measures, on the embedded emulated cluster and through the runner emulator that calls
the installed driver exactly as gitlab-runner does, what the driver itself costs a job:
per-stage and per-job overhead against running the same scripts directly in the same
sandbox, pod-running-to-prepare latency, log throughput against a raw exec, peak memory,
API requests per job and 50 concurrent jobs. It prints a table and writes every raw
sample to JSON, so a number in a report can always be traced to what was measured.
"""
