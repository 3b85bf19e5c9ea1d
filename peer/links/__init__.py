"""The wire and the links: protocol messages, the encrypted channel, the link to each peer, RPC,
the outbox, LAN discovery (which proposes addresses to dial) and the peer port's guard.

Builds on :mod:`peerstash.peer.trust` only.
"""
