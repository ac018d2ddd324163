"""Prompt completion shared by the TextGuidedSeg panel and the "Text prompt" Segment Editor effect."""

import qt

__all__ = ["PromptCompleter"]


class PromptCompleter:
    """Completion of the structure being typed in a prompt line edit, over a bundle's vocabulary.

    The fragment after the last separator (a comma, "and" ...) is completed; choosing a completion replaces it
    (``TextGuidedSegLogic.prompts``). The panel and the Segment Editor effect each own one.

    The completer is attached with ``setWidget`` (not ``QLineEdit.setCompleter``, which would complete the
    whole text), so Qt hands Enter to the line edit first: ``returnPressed()`` fires while the popup is
    still open, then the completer takes the highlighted completion. ``onAccept`` is therefore called
    only when ``enter_applies`` says so (popup closed, prompt non-empty, ``isRunning()`` false): Enter
    in an open popup completes and does not apply.
    """

    def __init__(self, lineEdit, onAccept=None, isRunning=None) -> None:
        self.lineEdit = lineEdit
        self.onAccept = onAccept
        self.isRunning = isRunning or (lambda: False)
        self.completer = qt.QCompleter([], lineEdit)
        self.completer.setCaseSensitivity(qt.Qt.CaseInsensitive)
        self.completer.setFilterMode(qt.Qt.MatchContains)  # "kid" offers Right Kidney and Left Kidney
        self.completer.setWidget(lineEdit)
        self.completer.connect("activated(QString)", self.onCompletionChosen)
        lineEdit.connect("textEdited(QString)", self.onPromptEdited)
        lineEdit.connect("returnPressed()", self.onReturnPressed)

    def popupOpen(self) -> bool:
        """True while the completion popup is shown."""
        return bool(self.completer.popup().isVisible())

    def onReturnPressed(self) -> None:
        """Enter in the line edit: apply unless it is completing (see the class docstring)."""
        from TextGuidedSegLogic.interaction import enter_applies

        if self.onAccept is not None and enter_applies(
            self.popupOpen(), self.lineEdit.text, self.isRunning()
        ):
            self.onAccept()

    def setVocabulary(self, vocabulary: list) -> None:
        """Complete over ``vocabulary`` (structure names)."""
        self.completer.setModel(qt.QStringListModel(vocabulary, self.completer))

    def onPromptEdited(self, text: str) -> None:
        """Offer completion for the structure being typed (the fragment after the last separator)."""
        from TextGuidedSegLogic.prompts import split_prompt_tail

        _head, fragment = split_prompt_tail(text)
        if not fragment.strip():
            self.completer.popup().hide()
            return
        self.completer.setCompletionPrefix(fragment.strip())
        if self.completer.completionCount() > 0:
            self.completer.complete()
        else:
            self.completer.popup().hide()

    def onCompletionChosen(self, choice: str) -> None:
        """Replace the fragment being typed by the chosen structure."""
        from TextGuidedSegLogic.prompts import complete_prompt

        self.lineEdit.text = complete_prompt(self.lineEdit.text, choice)
