"""The "Text prompt" Segment Editor effect; ``SegmentEditorEffect.py`` is loaded by the Segment Editor."""
