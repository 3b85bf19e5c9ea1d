"""Where the app meets the desktop and the toolkit: start at login (XDG autostart), notifications (D-Bus, balloon fallback), the qasync event loop and PySide6 workarounds."""
