"""Who a peer is and what it may do: keys, pairing tokens, grants, issuing tokens.

The bottom of ``peerstash.peer``: imports no other subpackage of it.
"""
