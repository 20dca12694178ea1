"""The import rules of docs/architecture.md, checked on the source tree.

cli -> serving / training / eval / data -> inference -> models -> modules; audio and data never
import models; models/llm.py (and the checkpoint importers that read foreign formats through
it) are the only places importing transformers or peft.
"""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "minmo"

# package -> minmo packages it must not import
FORBIDDEN = {
    "modules": {"models", "inference", "serving", "training", "eval", "data", "cli"},
    "models": {"inference", "serving", "training", "eval", "data", "cli"},
    "inference": {"serving", "training", "eval", "cli"},
    "serving": {"training", "cli"},
    "audio": {"models", "inference", "serving", "training", "eval", "cli"},
    "data": {"models", "inference", "serving", "training", "eval", "cli"},
    "training": {"serving", "cli"},
    "eval": {"training", "cli"},
}
HEAVY = {"transformers", "peft"}
HEAVY_ALLOWED = {"models/llm.py"}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_imports_point_down():
    violations = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        package = rel.parts[0] if len(rel.parts) > 1 else None
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] == "minmo" and len(parts) > 1 and parts[1] in FORBIDDEN.get(package, ()):
                violations.append(f"{rel} imports {name}")
    assert not violations, "imports must point down:\n" + "\n".join(violations)


def test_only_llm_module_imports_transformers_and_peft():
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        rel = str(path.relative_to(SRC))
        if rel in HEAVY_ALLOWED:
            continue
        heavy = {n for n in _imports(path) if n.split(".")[0] in HEAVY}
        if heavy:
            offenders.append(f"{rel}: {sorted(heavy)}")
    assert not offenders, "transformers/peft outside models/llm.py:\n" + "\n".join(offenders)
