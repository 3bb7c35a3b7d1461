"""Dashboard widgets: each panel renders one aspect of a telemetry snapshot; the chat widgets stream answers."""
