"""The local admin API on the node's Unix socket: the aiohttp server and the one admin client.

Kept empty on purpose: the CLI imports :mod:`peerstash.peer.api.client` and
:mod:`peerstash.peer.api.quickclient` on its fast path, which must not pull in aiohttp through
this package.
"""
