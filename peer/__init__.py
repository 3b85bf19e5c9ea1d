"""The Peerstash node: admin API, CLI, identity, pairing, links and the services on them.

Knows nothing of Qt; builds on ``peerstash.core``.
"""
