"""The Telegram source (issue 7): Telethon behind the `Source` interface.

- `credentials.py`: the account settings and the session, checked when used;
- `client.py`: the request boundary (`TelegramClient`) and Telethon behind it;
- `limits.py`: request pacing and FloodWait reading;
- `messages.py`: which counter comes from which part of a message;
- `source.py`: discovery and fetching, misses and deferrals.

Channel ids are normalised by `smart_retention.channels`. Nothing is imported here, so
the command line can use the credentials and client modules without loading Telethon.
"""
