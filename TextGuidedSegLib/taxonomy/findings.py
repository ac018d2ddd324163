"""Findings versus organs: "lesions in the liver" is a finding of the liver, never the liver itself.

A finding word (tumour, lesion, mass, cyst, nodule, metastasis, ...) next to a structure ("liver lesion",
"cyst of the right kidney", "tumours in the liver") names that structure's finding class of the anatomy
vocabulary: ``<host>_tumor`` (or ``<host>_lesion``) for the tumour-like words, ``<host>_cyst`` for cysts,
sided (``left_kidney_cyst``) when the host is one side. The host is the structure with its side removed
(``right_kidney`` -> ``kidney``, ``left_lung`` -> ``lung``).
"""

from __future__ import annotations

from collections.abc import Container, Sequence

from .anatomy import get_vocabulary
from .vocabulary import normalize_word

#: Finding words (matching form) and the kind of finding class they name.
FINDING_WORDS: dict[str, str] = {
    normalize_word(word): kind
    for kind, words in {
        "tumor": "tumor tumour tumors tumours lesion lesions mass masses nodule nodules metastasis "
        "metastases mets met cancer cancers carcinoma carcinomas neoplasm neoplasms malignancy malignancies "
        "neoplasia",
        "cyst": "cyst cysts",
    }.items()
    for word in words.split()
}
#: Finding class-name suffixes tried for each kind, in order.
FINDING_SUFFIXES: dict[str, tuple[str, ...]] = {"tumor": ("tumor", "lesion"), "cyst": ("cyst",)}
#: Words that may stand between a finding word and its host: "lesions in the liver", "cyst of the kidney".
FINDING_LINKS = frozenset({"in", "of", "the", "within", "on", "inside", "involving", "at", "from", "a", "an"})
_SIDES = ("right", "left")


def host_of(class_names: Sequence[str]) -> tuple[str, str | None] | None:
    """``(host, side)`` for the structures a phrase named: ``["right_kidney"]`` -> ``("kidney", "right")``;
    ``["right_kidney", "left_kidney"]`` -> ``("kidney", None)``; None when they share no host."""
    hosts: set[str] = set()
    sides: set[str | None] = set()
    for class_name in class_names:
        side = next((s for s in _SIDES if class_name.startswith(s + "_")), None)
        hosts.add(class_name.removeprefix(f"{side}_") if side else class_name)
        sides.add(side)
    if len(hosts) != 1:
        return None
    return hosts.pop(), (sides.pop() if len(sides) == 1 else None)


def finding_classes(host: str, side: str | None, kind: str, available: Container[str]) -> tuple[str, ...]:
    """The classes of ``available`` a finding of ``kind`` in ``host`` (on ``side``) means; empty when none.

    Example: ``finding_classes("kidney", None, "cyst", universal32)`` -> ``("kidney_cyst",)``.
    """
    vocabulary = get_vocabulary()
    for suffix in FINDING_SUFFIXES[kind]:
        name = f"{side}_{host}_{suffix}" if side else f"{host}_{suffix}"
        if name in vocabulary:
            found = vocabulary.expand(name, available)
            if found:
                return found
    return ()


def finding_class_names(kind: str | None = None) -> frozenset[str]:
    """Class names of the vocabulary that are findings (``liver_tumor``, ``kidney_cyst``, ``bone_lesion``), of
    one ``kind`` (``"tumor"``, ``"cyst"``) or all."""
    kinds = FINDING_SUFFIXES.values() if kind is None else [FINDING_SUFFIXES[kind]]
    suffixes = tuple(f"_{s}" for names in kinds for s in names)
    return frozenset(e.class_name for e in get_vocabulary() if e.class_name.endswith(suffixes))
