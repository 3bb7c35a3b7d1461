"""No worker fails silently. Each worker turns the failures it expects into messages of its own; an error it did
not expect would otherwise only set the worker's state (they run with ``exit_on_error=False`` so that one failure
does not close the app), and the screen waiting on it would wait for ever. Textual posts a worker's state changes
to the node that started it, without bubbling, so every app or screen that starts workers takes this mixin."""

from __future__ import annotations

from textual.worker import Worker, WorkerState

from moe_tui.params.config import one_line


class ReportsWorkerErrors:
    """Mixin for an App or Screen: a worker of its that ends in an error is one notification naming it."""

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """Notify about a worker that ended in an error (other state changes are left to their owners)."""
        error = event.worker.error
        if event.state != WorkerState.ERROR or error is None:
            return
        event.worker.node.app.notify(
            f"{type(error).__name__}: {one_line(error)}",
            title=f"{event.worker.group or event.worker.name} failed",
            severity="error",
            timeout=15,
        )
