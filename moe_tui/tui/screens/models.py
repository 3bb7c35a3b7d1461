"""Load model…: the models on this machine (the demo, the directories loaded before, the local Hugging Face
cache), described one by one in a worker (MoE or not, parameters, what fits), then the settings for the chosen
one: k, bits and prefetch preset to the planner's suggestion, eviction policy and miss mode to what the running
engine uses. A path or hub id can be typed instead: it is resolved and described the same way before anything is
loaded, so a wrong one is refused here and the model in use stays."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, cast

from rich.text import Text
from textual import on, work
from textual.binding import BindingType
from textual.containers import Grid, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from moe_tui.catalog import ModelEntry, ModelReport, describe, typed_entry
from moe_tui.engine_config import EXPERT_BITS, MISS_MODES, POLICY_NAMES, OffloadConfig
from moe_tui.errors import UserError
from moe_tui.tui import keys
from moe_tui.tui.screens.dialogs import scrolling_box
from moe_tui.tui.widgets.fields import TextField
from moe_tui.tui.workers import ReportsWorkerErrors

if TYPE_CHECKING:
    from moe_tui.tui.app import MoeTuiApp

# What the picker hands back: the model spec to load and the engine options chosen for it.
Choice = tuple[str, dict[str, Any]]


class ModelPickerScreen(ReportsWorkerErrors, ModalScreen[Choice | None]):
    """The model list; enter on a model, or on a path or hub id typed in the field, asks for its settings."""

    BINDINGS: ClassVar[list[BindingType]] = keys.bindings_where("dialog")

    def __init__(
        self,
        entries: list[ModelEntry],
        host_bytes: int,
        gpu_bytes: int | None,
        policy: str = "lru",
        miss: str = "copy",
    ) -> None:
        super().__init__(classes="dialog")
        self.entries = entries
        self.host_bytes = host_bytes
        self.gpu_bytes = gpu_bytes
        self.policy = policy  # the running engine's, kept for the next model unless changed in the form
        self.miss = miss
        self.reports: dict[int, ModelReport] = {}

    def compose(self):
        """Title, the model list, the path field, a hint."""
        with scrolling_box("models-box"):
            yield Label("Load model", classes="dialog-title")
            yield OptionList(*(self._option(index, None) for index in range(len(self.entries))), id="model-list")
            yield TextField(placeholder="or a model directory / cached hub id, then enter", id="model-path")
            yield Static("", id="model-note", markup=False)
            cancel = cast("MoeTuiApp", self.app).key_for("dialog.cancel")
            yield Static(f"enter: choose    tab: type a path    {cancel}: cancel", classes="dialog-hint", markup=False)

    def on_mount(self) -> None:
        """Describe the models in a worker (their configs and parameter trees take a moment each)."""
        self.query_one(OptionList).focus()
        self._describe_all()

    def _option(self, index: int, report: ModelReport | None) -> Option:
        entry = self.entries[index]
        label = Text(entry.name, no_wrap=True, overflow="ellipsis")
        label.append(f"  {entry.source}", style="dim")
        if report is None:
            label.append("\n  reading its config…", style="dim")
        else:
            label.append(f"\n  {report.summary()}", style="dim" if report.problem else "")
        return Option(label, id=str(index))

    @work(thread=True, exclusive=True, group="describe-models", exit_on_error=False)
    def _describe_all(self) -> None:
        for index, entry in enumerate(self.entries):
            if not self.is_attached:  # the picker was closed: stop reading configs
                return
            report = describe(entry, self.host_bytes, self.gpu_bytes)
            self.app.call_from_thread(self._show_report, index, report)

    def _show_report(self, index: int, report: ModelReport) -> None:
        if not self.is_attached:
            return
        self.reports[index] = report
        listing = self.query_one(OptionList)
        listing.replace_option_prompt_at_index(index, self._option(index, report).prompt)

    @on(OptionList.OptionSelected, "#model-list")
    def _chosen(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        index = int(event.option.id or 0)
        report = self.reports.get(index)
        if report is None:
            self.notify("still reading this model's config; a moment", severity="warning")
            return
        self._ask_options(report)

    def _ask_options(self, report: ModelReport) -> None:
        if report.problem:
            self.notify(f"{report.entry.name}: {report.problem}", severity="error")
            return
        self.app.push_screen(LoadOptionsScreen(report, self.policy, self.miss), self._options_chosen)

    def _options_chosen(self, choice: Choice | None) -> None:
        if choice is not None:
            self.dismiss(choice)

    @on(Input.Submitted, "#model-path")
    def _typed(self, event: Input.Submitted) -> None:
        event.stop()
        spec = event.value.strip()
        if spec:
            self._note(f"reading {spec}…")
            self._describe_typed(spec)

    @on(Input.Changed, "#model-path")
    def _typing(self) -> None:
        self._note("")

    @work(thread=True, exclusive=True, group="describe-typed", exit_on_error=False)
    def _describe_typed(self, spec: str) -> None:
        try:
            entry = typed_entry(spec)
        except UserError as error:
            self.app.call_from_thread(self._typed_problem, str(error))
            return
        report = describe(entry, self.host_bytes, self.gpu_bytes)
        if report.problem:
            self.app.call_from_thread(self._typed_problem, f"{entry.name}: {report.problem}")
        else:
            self.app.call_from_thread(self._typed_described, report)

    def _typed_problem(self, problem: str) -> None:
        if self.is_attached:
            self._note(problem, problem=True)

    def _typed_described(self, report: ModelReport) -> None:
        if self.is_attached:
            self._note("")
            self._ask_options(report)

    def _note(self, text: str, problem: bool = False) -> None:
        note = self.query_one("#model-note", Static)
        note.update(text)
        note.set_class(problem, "-problem")
        if problem:  # on a short terminal the note is below the fold: bring it (and the field above it) into view
            self.call_after_refresh(self.query_one("#models-box", VerticalScroll).scroll_end, animate=False)


class LoadOptionsScreen(ModalScreen[Choice | None]):
    """Cache size, expert bits and prefetch for one model, preset to the planner's suggestion; eviction policy and
    miss mode, preset to what the running engine uses."""

    BINDINGS: ClassVar[list[BindingType]] = keys.bindings_where("dialog")

    def __init__(self, report: ModelReport, policy: str = "lru", miss: str = "copy") -> None:
        super().__init__(classes="dialog")
        self.report = report
        self.policy = policy
        self.miss = miss

    def compose(self):
        """The five fields, preset, and what the suggestion is based on."""
        suggestion = self.report.suggestion
        k = str(suggestion.cache_size) if suggestion else "1"
        bits = str(suggestion.expert_bits) if suggestion and suggestion.expert_bits else ("none" if suggestion else "2")
        with scrolling_box("load-options-box"):
            yield Label(f"Load {self.report.entry.name}", classes="dialog-title", markup=False)
            with Grid(id="load-options-grid"):
                yield Label("cache size k")
                yield TextField(k, id="load-k")
                yield Label("expert bits (2, 3, 4, 8, none)")
                yield TextField(bits, id="load-bits")
                yield Label("prefetch")
                yield TextField(str(suggestion.prefetch) if suggestion else "1", id="load-prefetch")
                yield Label(f"policy ({', '.join(POLICY_NAMES)})")
                yield TextField(self.policy, id="load-policy")
                yield Label(f"misses ({', '.join(MISS_MODES)})")
                yield TextField(self.miss, id="load-miss")
            planned = (
                f"suggested for this machine: {suggestion.describe()}" if suggestion else "nothing fits this machine"
            )
            yield Static(planned, classes="dialog-hint", markup=False)
            yield Static("", id="load-error", markup=False)
            back = cast("MoeTuiApp", self.app).key_for("dialog.cancel")
            yield Static(f"enter: load    {back}: back", classes="dialog-hint", markup=False)

    def on_mount(self) -> None:
        """Enter loads with the suggestion as it stands; tab goes through the fields."""
        self.query_one("#load-k", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        """Check the fields and load, or say what is wrong."""
        event.stop()
        try:
            options = load_options(
                self.query_one("#load-k", Input).value,
                self.query_one("#load-bits", Input).value,
                self.query_one("#load-prefetch", Input).value,
                self.query_one("#load-policy", Input).value,
                self.query_one("#load-miss", Input).value,
            )
        except UserError as error:
            self.query_one("#load-error", Static).update(str(error))
            # on a short terminal the error is below the fold: bring it into view
            self.call_after_refresh(self.query_one("#load-options-box", VerticalScroll).scroll_end, animate=False)
            return
        self.dismiss((self.report.entry.spec, options))


def load_options(k: str, bits: str, prefetch: str, policy: str = "lru", miss: str = "copy") -> dict[str, Any]:
    """The engine settings the form's text chooses, checked as the engine checks them; UserError naming a bad
    field."""
    try:
        cache_size = int(k)
        prefetch_depth = int(prefetch)
    except ValueError:
        raise UserError("cache size and prefetch must be whole numbers") from None
    text = bits.strip().lower()
    if text in ("none", "", "-"):
        expert_bits = None
    elif text.isdigit() and int(text) in EXPERT_BITS:
        expert_bits = int(text)
    else:
        raise UserError(f"expert bits must be 2, 3, 4, 8 or none, not {bits!r}")
    chosen = {
        "cache_size": cache_size,
        "expert_bits": expert_bits,
        "prefetch": prefetch_depth,
        "policy": policy.strip().lower(),
        "miss": miss.strip().lower(),
    }
    OffloadConfig(**chosen)  # the engine's own checks, before the app leaves the form
    return chosen
