"""Chat nodes: Tornado servers for the widget, the agent console and the public API."""
