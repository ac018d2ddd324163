"""Qt pieces shared by the TextGuidedSeg panel and the "Text prompt" Segment Editor effect.

- ``ensureDependencies``: install the missing Python packages after asking (once per session).
- ``PromptCompleter``: completion of the structure being typed in a prompt line edit.

The effect imports them from here, not from the panel's ``TextGuidedSeg.py``. Nothing heavy is imported.
"""

from .completer import PromptCompleter
from .installer import ensureDependencies

__all__ = ["PromptCompleter", "ensureDependencies"]
