"""Tests where the other side is hostile: it sends what our code never would, and this node
refuses and stores nothing."""
