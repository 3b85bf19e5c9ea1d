"""The tray app. Views only: all behaviour lives in ``peerstash.peer`` and ``peerstash.core``."""
