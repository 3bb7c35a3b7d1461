"""The cache lab: hit rate for every policy and cache size k against Belady's optimum, on the trace being
replayed, on this session's own recording, or on a trace file; computed in a worker thread."""

from __future__ import annotations

import os
from typing import Any, ClassVar

from textual import work
from textual.binding import BindingType
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Label, Static
from textual.worker import get_current_worker

from moe_tui.errors import UserError
from moe_tui.paths import TRACES_DIR
from moe_tui.sim.lab import HOST_SUFFIX
from moe_tui.telemetry import LayerStep, TraceError, TraceEvent, TraceHeader, read_trace
from moe_tui.tui import keys
from moe_tui.tui.backend import Backend
from moe_tui.tui.workers import ReportsWorkerErrors

MIN_POLICY = "min"


def trace_of(backend: Backend) -> tuple[TraceHeader, list[TraceEvent], str]:
    """The trace to study: the replayed one, else the live session's recording; UserError when there is none."""
    found = backend.routing_trace()
    if found is None:
        raise UserError("no trace to study without a model: press o to open a trace file")
    header, events, source = found
    if not any(isinstance(event, LayerStep) for event in events):
        raise UserError("nothing recorded yet: ask the model something first, or press o to open a trace file")
    return header, events, source


def lab_rows(report: Any) -> tuple[list[str], list[list[str]]]:
    """Column titles and rows: k, then each policy's hit rate and its gap to MIN, then MIN itself."""
    policies = [policy for policy in report.policies if policy != MIN_POLICY]
    columns = ["k", *policies, "MIN"]  # the note above the table says what MIN is
    rows = []
    for k in report.cache_sizes:
        optimum = report.hit_rate(MIN_POLICY, k)
        cells = [str(k)]
        for policy in policies:
            rate = report.hit_rate(policy, k)
            cells.append(f"{rate * 100:5.1f}% ({(rate - optimum) * 100:+.1f})")
        cells.append(f"{optimum * 100:5.1f}%")
        rows.append(cells)
    return columns, rows


class LabScreen(ReportsWorkerErrors, Screen):
    """A table of simulated hit rates; escape or f4 goes back."""

    BINDINGS: ClassVar[list[BindingType]] = keys.bindings_where("lab")

    def __init__(self, backend: Backend) -> None:
        super().__init__(id="lab")
        self.backend = backend
        self._last_trace = ""  # the field's starting text next time: the last trace opened, else the samples

    def compose(self):
        """Title, explanation, table."""
        with Vertical(id="lab-box"):
            yield Label("Cache lab", id="lab-title")
            yield Static("simulating…", id="lab-note", markup=False)
            yield DataTable(id="lab-table", zebra_stripes=True, cursor_type="row")
        yield Footer()

    def on_mount(self) -> None:
        """Start the simulation."""
        try:
            header, events, source = trace_of(self.backend)
        except UserError as error:
            self.query_one("#lab-note", Static).update(str(error))
            return
        self._simulate(header, events, source)

    def action_open_trace(self) -> None:
        """Ask for a trace file (the field starts at the last one opened, else the bundled samples' folder) and
        simulate it instead."""
        from moe_tui.tui.screens.dialogs import AskScreen

        def study(answer: str | None) -> None:
            if not answer:
                return
            notes: list[str] = []
            try:
                header, events = read_trace(answer, notes)
            except TraceError as error:
                self.query_one("#lab-note", Static).update(str(error))
                return
            self._last_trace = answer
            self.query_one("#lab-note", Static).update(" ".join(["simulating…", *notes]))
            self._simulate(header, events, f"trace {answer}", tuple(notes))

        start = self._last_trace or f"{TRACES_DIR}{os.sep}"
        self.app.push_screen(AskScreen("Trace file to study:", start, extend=True), study)

    @work(thread=True, exclusive=True, group="lab", exit_on_error=False)
    def _simulate(
        self, header: TraceHeader, events: list[TraceEvent], source: str, notes: tuple[str, ...] = ()
    ) -> None:
        from moe_tui.sim import LabStopped, run_lab

        worker = get_current_worker()
        note = self.query_one("#lab-note", Static)

        def progress(done: int, total: int) -> None:
            if not worker.is_cancelled:
                self.app.call_from_thread(note.update, " ".join([f"simulating… replay {done} of {total}", *notes]))

        try:  # a long session's trace takes minutes: leaving the lab (or the app) stops it between replays
            report = run_lab(header, events, should_stop=lambda: worker.is_cancelled, progress=progress)
        except LabStopped:
            return
        except (UserError, ValueError) as error:
            self.app.call_from_thread(note.update, f"cannot simulate: {error}")
            return
        self.app.call_from_thread(self._show, report, source, notes)

    def _show(self, report: Any, source: str, notes: tuple[str, ...] = ()) -> None:
        header = report.header
        recorded = report.recorded.total
        note = (
            f"{source}: {header.model}, {header.num_layers} MoE layers x {header.num_experts} experts,"
            f" top-{header.top_k}, {report.passes} forward passes, {report.tokens} tokens."
            f" The engine ran {header.policy} and measured {recorded.hit_rate * 100:.1f}% hits."
            " Each cell: simulated hit rate (points vs MIN, Belady's optimum:"
            " no cache of that size misses less on this trace)."
        )
        if any(policy.endswith(HOST_SUFFIX) for policy in report.policies):
            note += (
                f" {HOST_SUFFIX}: misses are computed on the host and never copied, so only prefetched experts"
                " fill the slots (the engine's miss=host)."
            )
        self.query_one("#lab-note", Static).update(" ".join([note, *notes]))
        table = self.query_one(DataTable)
        columns, rows = lab_rows(report)
        table.clear(columns=True)
        table.add_columns(*columns)
        table.add_rows(rows)
        table.focus()
