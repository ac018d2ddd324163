"""Prompt completion shared by the TextGuidedSeg panel and the "Text prompt" Segment Editor effect."""

import qt

__all__ = ["PromptCompleter"]


class PromptCompleter:
    """Completion of the structure being typed in a prompt line edit, over a bundle's vocabulary.

    The fragment after the last separator (a comma, "and" ...) is completed; choosing a completion replaces it
    (``TextGuidedSegLogic.prompts``). The panel and the Segment Editor effect each own one.
    """

    def __init__(self, lineEdit) -> None:
        self.lineEdit = lineEdit
        self.completer = qt.QCompleter([], lineEdit)
        self.completer.setCaseSensitivity(qt.Qt.CaseInsensitive)
        self.completer.setFilterMode(qt.Qt.MatchContains)  # "kid" offers Right Kidney and Left Kidney
        self.completer.setWidget(lineEdit)
        self.completer.connect("activated(QString)", self.onCompletionChosen)
        lineEdit.connect("textEdited(QString)", self.onPromptEdited)

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
