"""Operations: what a person, a scheduled task or the model can ask the assistant to do.

Typed requests (launch, stop, pause, resume, retry, logs, add a task, ...) with their
arguments as pydantic models, validated once. The chat commands parse text into them and
the model's tools pass their JSON fields; both call the same operation, which calls the
run manager or the scheduler. Replies are rendered by the command layer above.

    channels -> orchestrator -> commands / tools -> operations -> runs, scheduler -> storage
"""
