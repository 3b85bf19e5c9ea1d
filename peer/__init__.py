"""The Peerstash node: admin API, CLI, and (later) identity, pairing and sync with peers.

Knows nothing of Qt; builds on ``peerstash.core``.
"""
