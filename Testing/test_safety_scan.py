"""Safe loading, checked: an AST scan of the shipped code for anything that can run code from a file.

Flagged: ``pickle``/``cPickle``/``dill``/``shelve``/``marshal``/``joblib`` imports (except a module that only
names ``UnpicklingError``, the error ``torch.load(weights_only=True)`` raises), ``torch.load`` without
``weights_only=True``, ``torch.jit.load``/``torch.hub.load``, ``eval``/``exec``/``compile``/``__import__``
calls and functions named ``eval``/``exec``, ``yaml.load`` without a safe loader (and ``yaml.unsafe_load``/
``full_load``), ``np.load`` with ``allow_pickle`` not ``False``, ``trust_remote_code`` not ``False``, archive
extraction outside :func:`TextGuidedSegLib.files.extract_zip` (``extractall``, ``tarfile``,
``shutil.unpack_archive``, a .zip opened for reading elsewhere), ``subprocess`` with ``shell=True``,
``os.system`` and ``os.popen``.

The scanner is tested on small bad snippets (each pattern must be caught) and good ones (none flagged), so
the package scan cannot pass vacuously.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("TextGuidedSegLib", "TextGuidedSeg", "TextGuidedSegEffect", "Training")

#: Modules whose loading runs pickled code.
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "shelve", "marshal", "joblib", "cloudpickle"}
#: Names of a pickle module a file may use: the exception type, never a loader.
PICKLE_HARMLESS = {"UnpicklingError", "PicklingError", "PickleError"}
DYNAMIC_BUILTINS = {"eval", "exec", "compile", "__import__"}
SAFE_YAML_LOADERS = {"yaml.SafeLoader", "yaml.CSafeLoader", "yaml.BaseLoader", "yaml.CBaseLoader"}
UNSAFE_YAML = {"yaml.unsafe_load", "yaml.unsafe_load_all", "yaml.full_load", "yaml.full_load_all"}
ALWAYS_BAD_CALLS = {
    "torch.jit.load": "TorchScript archives hold code",
    "torch.hub.load": "runs a repository's hubconf.py",
    "os.system": "runs a shell",
    "os.popen": "runs a shell",
    "asyncio.create_subprocess_shell": "runs a shell",
    **{name: "loads without a safe loader" for name in UNSAFE_YAML},
}
#: The one function that extracts archives to disk (confined: no "..", links, duplicates or zip bombs).
EXTRACTION_SITE = ("TextGuidedSegLib/files.py", "extract_zip")
#: Other functions that may open a .zip for reading, and why that is no extraction.
ZIP_READERS = {
    ("TextGuidedSegLib/registry/cache.py", "read_bundle_config"): "reads config.json into memory only",
}


@dataclass(frozen=True)
class Finding:
    """One unsafe construct: where, which rule, and the source line."""

    path: str
    line: int
    rule: str
    detail: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.rule}: {self.detail}"


def _aliases(tree: ast.Module) -> dict[str, str]:
    """Local name -> dotted name it is bound to by the module's imports (``np`` -> ``numpy``)."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    names[alias.asname] = alias.name
                else:
                    top = alias.name.split(".")[0]
                    names[top] = top
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def _dotted(node: ast.AST, aliases: dict[str, str]) -> str | None:
    """``np.load`` -> ``numpy.load`` (through the imports); None for anything but a name/attribute chain."""
    if isinstance(node, ast.Name):
        return aliases.get(node.id, node.id)
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value, aliases)
        return None if base is None else f"{base}.{node.attr}"
    return None


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_constant(node: ast.expr | None, value: object) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def _enclosing_functions(tree: ast.Module) -> dict[ast.AST, str]:
    """Every node -> the name of the innermost function holding it (``""`` at module level)."""
    owner: dict[ast.AST, str] = {}

    def visit(node: ast.AST, name: str) -> None:
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else name
            owner[child] = inner
            visit(child, inner)

    visit(tree, "")
    return owner


def _pickle_findings(tree: ast.Module, path: str) -> list[Finding]:
    """Imports of a pickle-like module, unless every use of it is its exception type."""
    out = []
    bound: dict[str, ast.stmt] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PICKLE_MODULES:
                    bound[alias.asname or alias.name.split(".")[0]] = node
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PICKLE_MODULES:
            for alias in node.names:
                if alias.name not in PICKLE_HARMLESS:
                    out.append(
                        Finding(path, node.lineno, "pickle", f"from {node.module} import {alias.name}")
                    )
    for name, node in bound.items():
        uses = [n for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id == name]
        parents = {id(child): parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
        harmful = [
            n
            for n in uses
            if not (isinstance(p := parents.get(id(n)), ast.Attribute) and p.attr in PICKLE_HARMLESS)
        ]
        if harmful or not uses:
            out.append(
                Finding(path, node.lineno, "pickle", f"import {name} (used beyond its exception type)")
            )
    return out


def _call_findings(call: ast.Call, name: str | None, path: str, where: str) -> list[Finding]:
    """The rules about one call whose callee resolves to ``name``."""
    line = call.lineno
    found: list[Finding] = []

    def flag(rule: str, detail: str) -> None:
        found.append(Finding(path, line, rule, detail))

    if isinstance(call.func, ast.Name) and call.func.id in DYNAMIC_BUILTINS:
        flag("dynamic-code", f"{call.func.id}() runs code built at run time")
    if name in ("builtins.eval", "builtins.exec", "builtins.compile", "builtins.__import__"):
        flag("dynamic-code", f"{name}() runs code built at run time")
    if name in ALWAYS_BAD_CALLS:
        flag("unsafe-call", f"{name}: {ALWAYS_BAD_CALLS[name]}")
    if name in ("torch.load", "torch.serialization.load") and not _is_constant(
        _keyword(call, "weights_only"), True
    ):
        flag("torch-load", f"{name} without weights_only=True unpickles code")
    if name in ("numpy.load", "numpy.lib.npyio.load"):
        allow = _keyword(call, "allow_pickle")
        if allow is not None and not _is_constant(allow, False):
            flag("numpy-load", "np.load with allow_pickle other than False")
    if name in ("yaml.load", "yaml.load_all"):
        loader = _keyword(call, "Loader") or (call.args[1] if len(call.args) > 1 else None)
        if loader is None or _dotted(loader, {}) not in SAFE_YAML_LOADERS:
            flag("yaml-load", f"{name} without yaml.SafeLoader (use yaml.safe_load)")
    trust = _keyword(call, "trust_remote_code")
    if trust is not None and not _is_constant(trust, False):
        flag("remote-code", "trust_remote_code runs a model repository's Python")
    shell = _keyword(call, "shell")
    if shell is not None and not _is_constant(shell, False) and name and name.startswith("subprocess."):
        flag("shell", f"{name} with shell=True")
    if name == "shutil.unpack_archive":
        flag("extraction", "shutil.unpack_archive: extract archives with TextGuidedSegLib.files.extract_zip")
    if isinstance(call.func, ast.Attribute) and call.func.attr == "extractall":
        flag("extraction", "extractall: extract archives with TextGuidedSegLib.files.extract_zip only")
    if name in ("zipfile.ZipFile", "zipfile.PyZipFile"):
        mode = _keyword(call, "mode") or (call.args[1] if len(call.args) > 1 else None)
        reading = mode is None or (isinstance(mode, ast.Constant) and mode.value == "r")
        if reading and (path, where) != EXTRACTION_SITE and (path, where) not in ZIP_READERS:
            flag("extraction", f"a .zip opened for reading in {where or 'module level'}: use extract_zip")
    return found


def scan_source(source: str, path: str) -> list[Finding]:
    """Every unsafe construct in one Python source (``path`` is how findings name it)."""
    tree = ast.parse(source, filename=path)
    aliases = _aliases(tree)
    owners = _enclosing_functions(tree)
    found = _pickle_findings(tree, path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            found += _call_findings(node, _dotted(node.func, aliases), path, owners.get(node, ""))
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in ("eval", "exec"):
            found.append(Finding(path, node.lineno, "dynamic-code", f"a function named {node.name}"))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            if any(m.split(".")[0] == "tarfile" for m in modules):
                found.append(Finding(path, node.lineno, "extraction", "tarfile: no tar archives are read"))
    return sorted(found, key=lambda f: (f.line, f.rule))


def package_files() -> list[Path]:
    """The shipped Python files of every package folder."""
    files = [p for package in PACKAGES for p in sorted((REPO_ROOT / package).rglob("*.py"))]
    return [p for p in files if "__pycache__" not in p.parts]


# ----------------------------------------------------------------------------------------------------------
# The package
# ----------------------------------------------------------------------------------------------------------


def test_package_has_no_unsafe_loading() -> None:
    files = package_files()
    assert len(files) > 100, f"only {len(files)} files found under {PACKAGES}: is the scan looking elsewhere?"
    findings = [
        f
        for path in files
        for f in scan_source(path.read_text(encoding="utf-8"), path.relative_to(REPO_ROOT).as_posix())
    ]
    assert not findings, "unsafe loading found:\n" + "\n".join(map(str, findings))


def test_extract_zip_is_the_only_extraction_site_and_every_zip_loader_uses_it() -> None:
    path, function = EXTRACTION_SITE
    tree = ast.parse((REPO_ROOT / path).read_text(encoding="utf-8"))
    assert any(isinstance(n, ast.FunctionDef) and n.name == function for n in tree.body), path
    callers = set()
    for file in package_files():
        relative = file.relative_to(REPO_ROOT).as_posix()
        module = ast.parse(file.read_text(encoding="utf-8"))
        owners, aliases = _enclosing_functions(module), _aliases(module)
        for node in ast.walk(module):
            if isinstance(node, ast.Call) and _dotted(node.func, aliases) in (
                "TextGuidedSegLib.files.extract_zip",
                "extract_zip",
            ):
                callers.add((relative, owners.get(node, "")))
    # the bundle loader, `textguidedseg info` and the MONAI importer: every place that takes a user's .zip
    assert callers == {
        ("TextGuidedSegLib/bundle.py", "_extract_zip"),
        ("TextGuidedSegLib/bundle_header.py", "describe_bundle"),
        ("TextGuidedSegLib/importers/monai_bundle.py", "import_monai_bundle"),
    }


# ----------------------------------------------------------------------------------------------------------
# The scanner itself: each pattern is caught, safe code is not
# ----------------------------------------------------------------------------------------------------------

BAD_SNIPPETS = {
    "import pickle\npickle.loads(b'')": "pickle",
    "import cPickle": "pickle",
    "import dill as d\nd.load(open('x'))": "pickle",
    "from pickle import loads": "pickle",
    "import joblib\njoblib.load('m.pkl')": "pickle",
    "import marshal\nmarshal.loads(b'')": "pickle",
    "import torch\ntorch.load('x.pt')": "torch-load",
    "import torch\ntorch.load('x.pt', weights_only=False)": "torch-load",
    "import torch as T\nT.load('x.pt', map_location='cpu')": "torch-load",
    "from torch import load\nload('x.pt')": "torch-load",
    "import torch\nflag = True\ntorch.load('x.pt', weights_only=flag)": "torch-load",
    "import torch\ntorch.jit.load('x.pt')": "unsafe-call",
    "import torch\ntorch.hub.load('a/b', 'm')": "unsafe-call",
    "eval('1 + 1')": "dynamic-code",
    "exec('x = 1')": "dynamic-code",
    "code = compile('1', 'f', 'eval')": "dynamic-code",
    "__import__('os')": "dynamic-code",
    "import builtins\nbuiltins.eval('1')": "dynamic-code",
    "class A:\n    def eval(self):\n        pass": "dynamic-code",
    "import yaml\nyaml.load(open('c.yaml'))": "yaml-load",
    "import yaml\nyaml.load(text, Loader=yaml.Loader)": "yaml-load",
    "import yaml\nyaml.load(text, yaml.UnsafeLoader)": "yaml-load",
    "import yaml\nyaml.unsafe_load(text)": "unsafe-call",
    "import yaml\nyaml.full_load(text)": "unsafe-call",
    "import numpy as np\nnp.load('a.npy', allow_pickle=True)": "numpy-load",
    "from numpy import load\nload('a.npz', allow_pickle=1)": "numpy-load",
    "import zipfile\nzipfile.ZipFile('b.zip').extractall('out')": "extraction",
    "import zipfile\ndef f():\n    with zipfile.ZipFile('b.zip') as z:\n        z.read('a')": "extraction",
    "import tarfile": "extraction",
    "import shutil\nshutil.unpack_archive('b.tar', 'out')": "extraction",
    "import subprocess\nsubprocess.run('ls', shell=True)": "shell",
    "from subprocess import Popen\nPopen('ls', shell=1)": "shell",
    "import os\nos.system('ls')": "unsafe-call",
    "import os\nos.popen('ls')": "unsafe-call",
    "import transformers\ntransformers.AutoModel.from_pretrained('x', trust_remote_code=True)": "remote-code",
}

GOOD_SNIPPETS = [
    "import torch\ntorch.load('x.pt', map_location='cpu', weights_only=True)",
    "import torch\nmodel = torch.nn.Linear(1, 1)\nmodel.eval()",
    "import torch\nmodel = torch.compile(torch.nn.Linear(1, 1))",
    "import re\npattern = re.compile('a+')",
    "import yaml\nyaml.safe_load('a: 1')\nyaml.load('a: 1', Loader=yaml.SafeLoader)",
    "import numpy as np\nnp.load('a.npy')\nnp.load('a.npy', mmap_mode='r', allow_pickle=False)",
    "import pickle\ntry:\n    pass\nexcept pickle.UnpicklingError:\n    pass",
    "from pickle import UnpicklingError",
    "import subprocess\nsubprocess.run(['ls', '-l'], check=True)",
    "import zipfile\nwith zipfile.ZipFile('b.zip', 'w') as z:\n    z.write('a')",
    "import zipfile\ndef extract_zip(p):\n    with zipfile.ZipFile(p) as z:\n        z.open('a')",
    "from transformers import AutoModel\nAutoModel.from_pretrained('x', use_safetensors=True)",
]


@pytest.mark.parametrize("source, rule", list(BAD_SNIPPETS.items()), ids=list(range(len(BAD_SNIPPETS))))
def test_scanner_catches_each_pattern(source: str, rule: str) -> None:
    path = EXTRACTION_SITE[0].replace("files.py", "snippet.py")
    findings = scan_source(source, path)
    assert rule in {f.rule for f in findings}, f"{source!r} gave {[str(f) for f in findings]}"
    assert all(f.path == path and f.line >= 1 for f in findings)


@pytest.mark.parametrize("source", GOOD_SNIPPETS, ids=list(range(len(GOOD_SNIPPETS))))
def test_scanner_passes_safe_code(source: str) -> None:
    findings = scan_source(source, EXTRACTION_SITE[0])
    assert findings == [], [str(f) for f in findings]


def test_scanner_names_file_and_line() -> None:
    source = "import torch\n\n\ndef read(path):\n    return torch.load(path)\n"
    (finding,) = scan_source(source, "TextGuidedSegLib/x.py")
    assert (finding.path, finding.line, finding.rule) == ("TextGuidedSegLib/x.py", 5, "torch-load")
    assert str(finding).startswith("TextGuidedSegLib/x.py:5: torch-load:")
