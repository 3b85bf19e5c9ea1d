"""Dialogs: the forms (plans, repositories, grants), the first-run assistant, confirmations before destructive actions, and the questions on close and quit."""
