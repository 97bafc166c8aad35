"""The local channel's protocol constants, shared by the service and its client.

The client (`assistant send`, `chat`, `inbox`) imports this and nothing of the service, so
it starts in milliseconds; assistant/channels/local.py describes the protocol.
"""

from __future__ import annotations

LOCAL_CHAT = "local:console"
MAX_LINE = 1024 * 1024
# What each line must be, quoted in the error reply to a line that is not.
HELLO_SHAPE = 'expected one line of UTF-8 JSON: {"token": "<from local-channel.json>"}'
MESSAGE_SHAPE = (
    'expected one line of UTF-8 JSON: {"type": "message", "id": "<string>", "text": "<string>"}'
)
ACK_SHAPE = 'expected one line of UTF-8 JSON: {"type": "ack", "outbox": <integer>}'
