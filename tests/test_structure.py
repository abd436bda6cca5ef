"""The size limits the code keeps (issue 23): no function over 120 lines, no module over 600, a README
(the user guide) of at most 250 lines whose links to files of the repository resolve."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "finpercep"
MAX_FUNCTION, MAX_MODULE, MAX_README = 120, 600, 250


def test_functions_and_modules_stay_small() -> None:
    too_long = []
    for path in sorted(SRC.rglob("*.py")):
        text = path.read_text()
        rel = path.relative_to(SRC)
        if text.count("\n") > MAX_MODULE:
            too_long.append(f"module {rel}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION:
                    too_long.append(f"{rel}:{node.lineno} {node.name}: {n} lines")
    assert not too_long, "\n".join(too_long)


def test_the_readme_is_a_short_guide_with_working_links() -> None:
    text = (ROOT / "README.md").read_text()
    assert text.count("\n") <= MAX_README, f"README.md: {text.count(chr(10))} lines"
    targets = {t.split("#")[0] for t in re.findall(r"\]\(([^)\s]+)\)", text)}
    missing = sorted(t for t in targets if t and "://" not in t and not (ROOT / t).exists())
    assert not missing, missing
