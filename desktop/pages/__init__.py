"""The main window's pages: each a view over the admin API (through desktop/backend.py), no decisions of its own."""
