"""Small modal dialogs: a one-line text question (model path, export file, a title) and a yes/no question; the
scrolling box the larger forms are laid out in."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, ClassVar, cast

from textual.binding import BindingType
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Input, Label, Static

from moe_tui.tui import keys
from moe_tui.tui.widgets.fields import TextField

if TYPE_CHECKING:
    from moe_tui.tui.app import MoeTuiApp


def scrolling_box(box_id: str) -> VerticalScroll:
    """A form's box that scrolls on a short terminal; never focused itself, so tab goes from field to field
    (the focused field is scrolled into view)."""
    box = VerticalScroll(classes="dialog-box", id=box_id)
    box.can_focus = False
    return box


class AskScreen(ModalScreen[str | None]):
    """Ask for one line of text; enter answers, escape cancels (dismisses with None).

    The starting ``value`` is selected, so typing replaces it (a title to rename); with ``extend`` it is a path
    to type on from: the cursor starts after it and nothing is selected, and an absolute path or ``~`` typed
    after it starts over (:func:`typed_path`).
    """

    BINDINGS: ClassVar[list[BindingType]] = keys.bindings_where("dialog")

    def __init__(self, question: str, value: str = "", extend: bool = False) -> None:
        super().__init__(classes="dialog")
        self.question = question
        self.value = value
        self.extend = extend

    def compose(self):
        """Question, input, hint."""
        with Vertical(classes="dialog-box"):
            yield Label(self.question, classes="dialog-title")
            yield TextField(value=self.value, id="ask-input", select_on_focus=not self.extend)
            cancel = cast("MoeTuiApp", self.app).key_for("dialog.cancel")
            yield Static(f"enter: OK    {cancel}: cancel", classes="dialog-hint", markup=False)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        """Answer with the text typed (with ``extend``, read as :func:`typed_path`)."""
        event.stop()
        text = event.value.strip()
        self.dismiss((typed_path(text) if self.extend else text) or None)


def typed_path(text: str) -> str:
    """A path typed on from a folder already in the field, read as its typist means it: an absolute path or a
    ``~`` typed after the folder starts over, so ``/home/me//tmp/x.md`` is ``/tmp/x.md`` and
    ``/home/me/~/x.md`` is ``~/x.md``."""
    start = 0
    double = text.rfind(os.sep + os.sep)
    if double >= 0:
        start = double + 1
    home = text.rfind(os.sep + "~")
    if home >= start and text[home + 2 : home + 3] in ("", os.sep):
        start = home + 1
    return text[start:]


class ConfirmScreen(ModalScreen[bool]):
    """A yes/no question: y (or enter) answers yes, n (or escape) no."""

    BINDINGS: ClassVar[list[BindingType]] = keys.bindings_where("confirm")

    def __init__(self, question: str) -> None:
        super().__init__(classes="dialog")
        self.question = question

    def compose(self):
        """Question and hint."""
        with Vertical(classes="dialog-box"):
            yield Label(self.question, classes="dialog-title", markup=False)
            key = cast("MoeTuiApp", self.app).key_for
            yield Static(f"{key('confirm.yes')}: yes    {key('confirm.no')}: no", classes="dialog-hint", markup=False)
