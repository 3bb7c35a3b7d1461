"""The moe-tui App: wiring only. Themes, settings, history store and system probe in; a loading worker that
attaches a model session or a replayed trace to the main screen; any failure turned into an error screen."""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

from textual import work
from textual.app import App
from textual.binding import BindingType
from textual.message import Message

from moe_tui import config, paths
from moe_tui.errors import UserError
from moe_tui.system import Probe, SystemProbe
from moe_tui.themes import DEFAULT_THEME, DEFAULT_VARIABLES, load_theme
from moe_tui.tui import keys
from moe_tui.tui.backend import Backend, LaunchOptions, NoBackend, Progress, load_backend
from moe_tui.tui.palette import OrderedCommandPalette
from moe_tui.tui.screens.error import ErrorScreen
from moe_tui.tui.screens.help import HelpScreen
from moe_tui.tui.screens.loading import LoadingScreen, LoadProgress
from moe_tui.tui.screens.main import MainScreen
from moe_tui.tui.workers import ReportsWorkerErrors

Loader = Callable[[LaunchOptions, Progress], Backend]
ANSWER_STOP_TIMEOUT_S = 10.0


class LoadCancelled(Exception):
    """Raised in the loading worker, at its next progress report, once the user has cancelled the load."""


class LoadFinished(Message):
    """The loading worker is done: a backend, the error that stopped it, or the user's cancel."""

    def __init__(
        self,
        backend: Backend | None,
        error: str = "",
        details: str = "",
        user_error: bool = True,
        subject: str = "model",
        cancelled: bool = False,
    ) -> None:
        super().__init__()
        self.backend = backend
        self.error = error
        self.details = details
        self.user_error = user_error
        self.subject = subject  # what was being opened: "model", or "trace" for a replay
        self.cancelled = cancelled


class MoeTuiApp(ReportsWorkerErrors, App[int]):
    """Chat with an offloaded MoE model (or replay a trace) and watch its experts, cache and memory live."""

    CSS_PATH = "app.tcss"
    TITLE = "moe-tui"
    BINDINGS: ClassVar[list[BindingType]] = keys.bindings("app.help", "app.palette", "app.quit", "app.theme")

    def __init__(
        self,
        options: LaunchOptions,
        *,
        theme: str | None = None,
        loader: Loader = load_backend,
        probe: Probe | None = None,
        store_factory: Callable[[], Any] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        self.options = options
        self.requested_theme = theme
        self.loader = loader
        self.probe = probe
        self.store_factory = store_factory
        self.clock = clock
        self.moe_themes: list[str] = []
        self.settings, self._settings_warning = config.load_settings()
        self.keymap: dict[str, str] = {}
        self.store: Any = None
        self.main: MainScreen | None = None
        self.loading_screen: LoadingScreen | None = None
        self.startup_s: float | None = None
        self.model_loading = False
        self._cancel_load = threading.Event()  # set by cancel_load; each load starts with a fresh one
        self._started = time.perf_counter()

    def get_theme_variable_defaults(self) -> dict[str, str]:
        """Heat and status colours for themes that do not define them (Textual's own)."""
        return dict(DEFAULT_VARIABLES)

    # ----------------------------------------------------------------- start
    def on_mount(self) -> None:
        """Themes, keymap, history, the main screen, then load the model behind the loading screen."""
        warnings = [self._settings_warning] if self._settings_warning else []
        warnings += self._register_themes()
        self.theme = self._initial_theme(warnings)
        known, unknown = keys.check_keymap(self.settings.keymap)
        if unknown:
            warnings.append(f"settings: unknown key binding ids {', '.join(unknown)} (help lists the ids)")
        undelivered = keys.undelivered_keys(known)
        if undelivered:
            warnings.append(
                f"settings: xterm, tmux and most terminals over SSH never send {'; '.join(undelivered)} as that key"
                " (only terminals with the kitty keyboard protocol do); choose an alt+letter or a function key"
            )
        clashing = keys.clashes(known)
        if clashing:
            warnings.append(f"settings: {'; '.join(clashing)}, so only one of them runs (help lists the keys)")
        self.keymap = known
        self.set_keymap(known)
        store_error = self._open_store()
        generation = self._generation_defaults(warnings)
        self.main = MainScreen(self.store, self.probe or SystemProbe(), self.settings, generation)
        self.push_screen(self.main)
        for warning in warnings:
            self.notify(warning, severity="warning", timeout=10)
        self.theme_changed_signal.subscribe(self, self._on_theme_changed)
        if store_error:
            self.push_screen(
                ErrorScreen(
                    "Chat history unavailable",
                    store_error,
                    "You can still chat; answers will not be saved this time.",
                )
            )
        self.call_after_refresh(self._mark_started)
        self.load_model(self.options.model, replay=self.options.replay)

    def _mark_started(self) -> None:
        self.startup_s = time.perf_counter() - self._started

    def _register_themes(self) -> list[str]:
        """The bundled themes, then the user's own (a theme of the same name replaces the bundled one); a theme
        file that cannot be used is skipped with a warning naming it, and the others load."""
        from moe_tui.paths import THEMES_DIR, user_themes_dir

        warnings = []
        user_dir = user_themes_dir()
        user_files = sorted(user_dir.glob("*.toml")) if user_dir.is_dir() else []
        for path in [*sorted(THEMES_DIR.glob("*.toml")), *user_files]:
            try:
                theme = load_theme(path)
            except UserError as error:
                warnings.append(f"{error} (theme skipped)")
                continue
            self.register_theme(theme)
            if theme.name not in self.moe_themes:
                self.moe_themes.append(theme.name)
        return warnings

    def _initial_theme(self, warnings: list[str]) -> str:
        for source, name in (("--theme", self.requested_theme), ("settings", self.settings.theme)):
            if name:
                if name in self.available_themes:
                    return name
                warnings.append(f"{source}: unknown theme {name!r}; choose from {', '.join(self.moe_themes)}")
        return DEFAULT_THEME if DEFAULT_THEME in self.available_themes else "textual-dark"

    def _open_store(self) -> str:
        try:
            if self.store_factory is not None:
                self.store = self.store_factory()
            else:
                from moe_tui.chat.history import HistoryStore

                self.store = HistoryStore()
        except UserError as error:
            self.store = None
            return str(error)
        return ""

    def _generation_defaults(self, warnings: list[str]) -> Any:
        from moe_tui.chat.defaults import effective_generation

        try:
            return effective_generation(self.settings.generation, {})[0]
        except UserError as error:
            warnings.append(f"settings: {error}; using the default generation settings")
            return effective_generation({}, {})[0]

    # ----------------------------------------------------------------- loading
    def load_model(self, model: str | None, replay: str | None = None, engine: dict[str, Any] | None = None) -> None:
        """Load a model (or open a trace) in a worker behind the loading screen; ``engine`` replaces engine
        settings of the launch (cache size, expert bits, prefetch, policy and miss mode chosen in the model
        picker)."""
        if self.loading_screen is not None:
            # A load's thread cannot be killed (a cancel ends it at its next report); a second one beside it
            # would hold two stores at once, which is what switching one model for another must never do.
            self.notify("a model is still loading; load another once it is ready", severity="warning")
            return
        settings = replace(self.options.engine, **(engine or {}))
        options = replace(self.options, model=model, replay=replay, engine=settings)
        what = f"trace {replay}" if replay else (model or "the demo model")
        if self.main is not None:
            self.main.show_loading(f"loading {what}…")
            if self.main.backend.mode == "live":
                # one model at a time: the old one's store and slots are freed before the new one takes its memory
                old = self.main.backend
                self.main.attach(NoBackend())
                old.close()
        loading = LoadingScreen(what)
        self.loading_screen = loading
        self._cancel_load = threading.Event()
        self.push_screen(loading)
        # Start the heavy imports only once the loading screen is on the terminal: the import holds the GIL
        # for long stretches and would otherwise delay the first frame.
        self.call_after_refresh(self._load, options, self._cancel_load)

    def cancel_load(self) -> None:
        """Stop the model loading now: the worker ends at its next progress report (after the read or the expert
        under way), leaving no half-saved store, and the app carries on without a model."""
        if self.loading_screen is None or self._cancel_load.is_set():
            return
        self._cancel_load.set()
        if self.loading_screen.is_attached:  # not after esc hid it
            self.loading_screen.show_cancelling()
        if self.main is not None:
            self.main.show_loading("cancelling the load…")

    @work(thread=True, exclusive=True, group="load", exit_on_error=False)
    def _load(self, options: LaunchOptions, cancel: threading.Event) -> None:
        first_reports: dict[str, float] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if cancel.is_set():
                raise LoadCancelled
            started = first_reports.setdefault(stage, time.monotonic())
            self.post_message(LoadProgress(stage, done, total, started))

        self.model_loading = True
        subject = "trace" if options.replay else "model"
        try:
            backend = self.loader(options, progress)
            if cancel.is_set():  # cancelled after the last report: the user asked for no model
                backend.close()
                raise LoadCancelled
        except LoadCancelled:
            self.post_message(LoadFinished(None, subject=subject, cancelled=True))
        except UserError as error:
            self.post_message(LoadFinished(None, str(error), subject=subject))
        except Exception as error:  # an unexpected failure still ends on a readable screen
            summary = traceback.format_exception_only(type(error), error)[-1].strip()
            self.post_message(LoadFinished(None, summary, traceback.format_exc(), user_error=False, subject=subject))
        else:
            self.post_message(LoadFinished(backend))
        finally:
            self.model_loading = False

    def _remember_model(self, backend: Any) -> None:
        """Keep a model directory loaded from a path among the picker's recent models (hub ids are listed from the
        cache anyway; the demo always is)."""
        directory = getattr(backend, "model_directory", None)
        if backend.mode != "live" or directory is None or Path(directory) == paths.DEMO_MODEL_DIR:
            return
        self.remember(recent_models=config.with_recent_model(str(directory)))

    async def on_load_progress(self, message: LoadProgress) -> None:
        """Move the loading screen's bars (if it is shown) and the status bar's note."""
        if self.loading_screen is not None and self.loading_screen.is_attached:
            await self.loading_screen.show_progress(message)
        if self.main is not None:
            self.main.show_loading(f"loading: {message.stage} {message.done}/{message.total}")

    def on_load_finished(self, message: LoadFinished) -> None:
        """Attach the loaded backend, or explain why loading failed and carry on without a model."""
        loading, self.loading_screen = self.loading_screen, None
        if loading is not None and loading is self.screen:
            self.pop_screen()
        elif loading is not None and loading in self.screen_stack:
            loading.finish()  # covered by the palette or help: it leaves when what covers it closes
        assert self.main is not None
        self.main.show_loading("")
        if message.backend is not None:
            old = self.main.backend
            self.main.attach(message.backend)
            self._remember_model(message.backend)
            if old is not message.backend:
                old.close()
            for note in message.backend.notes:
                self.notify(note, title="Note", severity="warning", timeout=10)
            return
        if message.cancelled:
            if isinstance(self.main.backend, NoBackend):
                self.main.attach(self.main.backend)  # the prompt, the status and the panels stop saying "loading"
            self.notify(f"loading the {message.subject} was cancelled", title="Cancelled")
            return
        if not isinstance(self.main.backend, NoBackend):
            keep = f"Still using {self.main.backend.name}."
        else:
            self.main.attach(self.main.backend)  # the prompt, the status and the panels stop saying "loading"
            keep = (
                f"You can browse earlier chats ({self.key_for('chat.conversations')}) and load another model from"
                f" the command palette ({self.key_for('app.palette')})."
            )
        verb = "open" if message.subject == "trace" else "load"
        title = f"Could not {verb} the {message.subject}" if message.user_error else "Loading failed unexpectedly"
        self.push_screen(ErrorScreen(title, message.error, keep, message.details))

    def key_for(self, binding_id: str) -> str:
        """The (first) key that triggers ``binding_id`` now, from the user's keymap or else the default, as the
        help shows it: what a status line or notice names."""
        return keys.display_keys(next(iter(keys.keys_in_effect(self.keymap, binding_id)), "(no key)"))

    # ----------------------------------------------------------------- actions
    def action_help(self) -> None:
        """Show the keys."""
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(self.keymap))

    def action_command_palette(self) -> None:
        """Open the command palette (Textual's, with a search field that takes keys in order)."""
        if self.use_command_palette and not OrderedCommandPalette.is_open(self):
            self.push_screen(OrderedCommandPalette(id="--command-palette"))

    def action_next_theme(self) -> None:
        """Cycle through moe-tui's themes."""
        if self.moe_themes:
            index = self.moe_themes.index(self.theme) + 1 if self.theme in self.moe_themes else 0
            self.set_theme(self.moe_themes[index % len(self.moe_themes)])

    def set_theme(self, name: str) -> None:
        """Switch theme (remembered in the settings file)."""
        self.theme = name

    def _on_theme_changed(self, theme: Any) -> None:
        # Saved only when it differs from what the file gives (or the default, when the file names none): the
        # start-up theme is not a choice, and a file with errors is not rewritten before the user changes anything.
        if theme.name != (self.settings.theme or DEFAULT_THEME):
            self.remember(theme=theme.name)
        if self.main is not None:
            self.main.redraw_all()

    def remember(self, **changes: Any) -> None:
        """Save ``changes`` (see ``config.apply_changes``) in the settings file, over what it holds now (an edit
        made since the start stays), and take the fields written into the settings this run uses; a failed write
        is reported, never fatal."""
        try:
            updated, kept = config.update_settings(changes)
        except OSError as error:
            self.settings = config.apply_changes(self.settings, changes)
            self.notify(f"could not save settings: {error}", severity="warning")
            return
        self.settings = replace(self.settings, **{name: getattr(updated, name) for name in changes})
        if kept is not None:
            self.notify(f"the settings file had errors; your version is kept as {kept}", severity="warning", timeout=10)

    async def on_unmount(self) -> None:
        """Stop a load and an answer in progress, then release the model, the probe and the database."""
        # A loading thread cannot be killed, and the process would wait for it: quitting during an hour of
        # quantization left a blank terminal over a process still at work. It stops at its next report instead.
        self._cancel_load.set()
        if self.main is not None:
            self.main.shutdown()
            await self.main.stop_generation(timeout=ANSWER_STOP_TIMEOUT_S)
            self.main.backend.close()
            self.main.probe.close()
        if self.store is not None:
            self.store.close()
