"""Storage: tables, migrations, and the set-based reads and writes the collector uses.

Storage knows posts and counters, not Telegram. Nothing here commits: the caller owns
the transaction (one per collection batch).
"""
