"""Self-contained HTML reports of collections, characterizations and replays."""
