"""Structure taxonomy and prompt parser.

- :class:`Taxonomy` / :class:`Structure`: the ordered structures a model knows (channel ``i`` has
  ``label_id = i + 1``), with display names, synonyms, laterality, canonical prompts and Slicer terminology
  (:class:`Terminology`, :class:`Code`). :func:`get_taxonomy` loads a shipped one; the default ``universal32``
  holds the 32 classes of the CLIP-Driven Universal Model (``TextGuidedSegLib/resources/universal32.json``).
- :func:`parse_prompt`: free text -> :class:`StructureQuery` list ("liver and both kidneys" -> liver, right
  kidney, left kidney); :class:`PromptError` when a prompt cannot be used; :func:`explain_prompt` also reports
  corrections, exclusions, findings and free text (:class:`PromptParse`, ``guessed``).
- :func:`structure_vocabulary`: every name a user can type, for UI completion.
- :func:`get_vocabulary` / :func:`vocabulary_taxonomy` / :func:`resolve_structure_name`: the one anatomy
  vocabulary (``resources/anatomy.json``: every structure any model knows, with codes, colours, synonyms,
  published models' label names and parts) and taxonomies built from it.

Nothing here imports torch.

Example::

    from TextGuidedSegLib.taxonomy import get_taxonomy, parse_prompt

    taxonomy = get_taxonomy()
    for query in parse_prompt("Segment the liver and kidneys", taxonomy):
        print(query.class_name, query.prompt, query.structure.terminology.slicer_entry())
"""

from .anatomy import AnatomyEntry, Vocabulary, get_vocabulary, resolve_structure_name, vocabulary_taxonomy
from .prompt import (
    PromptError,
    PromptParse,
    StructureQuery,
    explain_prompt,
    parse_prompt,
    structure_vocabulary,
)
from .structures import (
    DEFAULT_TAXONOMY,
    PROMPT_TEMPLATE,
    Structure,
    Taxonomy,
    available_taxonomies,
    canonical_prompt,
    get_taxonomy,
)
from .terminology import (
    ANATOMIC_REGION_CONTEXT,
    SLICER_GENERAL_ANATOMY_CONTEXT,
    TEXTGUIDEDSEG_CONTEXT,
    TOTALSEGMENTATOR_CONTEXT,
    Code,
    Terminology,
)

__all__ = [
    "ANATOMIC_REGION_CONTEXT",
    "AnatomyEntry",
    "Vocabulary",
    "get_vocabulary",
    "resolve_structure_name",
    "vocabulary_taxonomy",
    "DEFAULT_TAXONOMY",
    "PROMPT_TEMPLATE",
    "SLICER_GENERAL_ANATOMY_CONTEXT",
    "TEXTGUIDEDSEG_CONTEXT",
    "TOTALSEGMENTATOR_CONTEXT",
    "Code",
    "PromptError",
    "PromptParse",
    "explain_prompt",
    "Structure",
    "StructureQuery",
    "Taxonomy",
    "Terminology",
    "available_taxonomies",
    "canonical_prompt",
    "get_taxonomy",
    "parse_prompt",
    "structure_vocabulary",
]
