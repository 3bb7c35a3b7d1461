"""The chat backend: a SQLite conversation history (:mod:`.history`) and a streaming generation session.

:mod:`.session` loads a model through the offloading engine and streams its answers. Nothing here imports
Textual; the dashboard builds its chat screens on these two modules.
"""
