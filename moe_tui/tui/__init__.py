"""The Textual dashboard: screens, panels and the app that wires them to a model session or a replayed trace."""
