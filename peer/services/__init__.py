"""The features that ride a link: op history sync, shared repositories, remote commands,
remote configuration and logs, and the fleet view of what peers synced to us.

Builds on :mod:`peerstash.peer.links` and :mod:`peerstash.peer.trust`.
"""
