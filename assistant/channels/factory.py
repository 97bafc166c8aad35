"""The chat channels a configuration asks for: the local one always, and each platform
whose token is set. Adapters import their library only when configured."""

from __future__ import annotations

from assistant.channels.base import Channel
from assistant.config import Settings
from storage.kv import KeyValue


def platform_channels(settings: Settings, kv: KeyValue) -> list[Channel]:
    """Telegram, Slack and Discord adapters for every token present (any subset)."""
    found: list[Channel] = []
    name = settings.assistant_name
    if settings.telegram_bot_token is not None:
        from assistant.channels.telegram import TelegramChannel

        found.append(
            TelegramChannel(
                settings.telegram_bot_token.get_secret_value(),
                api_url=settings.telegram_api_url,
                kv=kv,
                bot_name=name,
            )
        )
    if settings.slack_bot_token is not None and settings.slack_app_token is not None:
        from assistant.channels.slack import SlackChannel

        found.append(
            SlackChannel(
                settings.slack_bot_token.get_secret_value(),
                settings.slack_app_token.get_secret_value(),
                api_url=settings.slack_api_url,
                bot_name=name,
                command=settings.slack_command,
            )
        )
    if settings.discord_bot_token is not None:
        from assistant.channels.discord import DiscordChannel

        found.append(
            DiscordChannel(
                settings.discord_bot_token.get_secret_value(),
                api_url=settings.discord_api_url,
                gateway_url=settings.discord_gateway_url,
                bot_name=name,
                guild_id=settings.discord_guild_id,
            )
        )
    return found
