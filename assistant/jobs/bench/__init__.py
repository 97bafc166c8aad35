"""The serving benchmark: the reference matrix against an OpenAI-compatible endpoint.

`profiles` (what to run, and the checks on user input), `client` (the timed requests),
`results` (vLLM-named figures, files, the comparable check), `server_metrics` (the
server's own Prometheus /metrics, read around each profile), `engine_stats` (vLLM's log
lines, the fallback where there is no /metrics) and `serve` (the job a run executes).
`profiles`, `results` and `engine_stats` are standard library only, so the host can import
them without the benchmark's dependencies (aiohttp, prometheus-client).
"""
