"""The serving benchmark: the reference matrix against an OpenAI-compatible endpoint.

`profiles` (what to run, and the checks on user input), `client` (the timed requests),
`results` (vLLM-named figures, files, the comparable check), `engine_stats` (vLLM's log
lines) and `serve` (the job a run executes). All but `client` and `serve` are standard
library only, so the host can import them without the benchmark's dependencies.
"""
