"""Build tests/data/stdlib_humaneval.jsonl: HumanEval-format problems from real Python standard
library functions (CPython 3.11 Lib/, PSF-2.0 licence).

    .venv/bin/python examples/code/build_stdlib_problems.py   # rewrites the file from this interpreter's stdlib

For each function the prompt is its module-level context (imports / helpers it needs), its
``def`` line and its real docstring; ``canonical_solution`` is its real body; ``test`` is a
``check(candidate)`` written for this file (assertions checked against the stdlib itself).
"""

from __future__ import annotations

import ast
import json
import sysconfig
from pathlib import Path

STDLIB = Path(sysconfig.get_paths()["stdlib"])
OUT = Path(__file__).resolve().parents[2] / "tests" / "data" / "stdlib_humaneval.jsonl"
FIND_UNSAFE = "import re\n\n_find_unsafe = re.compile(r'[^\\w@%+=:,./-]', re.ASCII).search\n\n\n"
DEDENT_RES = ("import re\n\n_whitespace_only_re = re.compile('^[ \\t]+$', re.MULTILINE)\n"
              "_leading_whitespace_re = re.compile('(^[ \\t]*)(?:[^ \\t\\n])', re.MULTILINE)\n\n\n")

# (module file, function, context the function needs, check body)
PROBLEMS = [
    ("calendar.py", "isleap", "", "    assert candidate(2000) is True\n    assert candidate(1900) is False\n    assert candidate(2024) is True\n    assert candidate(2023) is False\n"),
    ("calendar.py", "leapdays", "", "    assert candidate(2000, 2001) == 1\n    assert candidate(1900, 2000) == 24\n    assert candidate(2001, 2001) == 0\n    assert candidate(1, 2025) == 491\n"),
    ("string.py", "capwords", "", "    assert candidate('hello   world') == 'Hello World'\n    assert candidate('  aBC dEF ') == 'Abc Def'\n    assert candidate('a-b-c', '-') == 'A-B-C'\n    assert candidate('') == ''\n"),
    ("textwrap.py", "indent", "", "    assert candidate('a\\n\\nb\\n', '> ') == '> a\\n\\n> b\\n'\n    assert candidate('a\\nb', '+', lambda line: True) == '+a\\n+b'\n    assert candidate('  \\nx', '#') == '  \\n#x'\n"),
    ("textwrap.py", "dedent", DEDENT_RES, "    assert candidate('    a\\n    b\\n') == 'a\\nb\\n'\n    assert candidate('  a\\n    b') == 'a\\n  b'\n    assert candidate('\\ta\\n  b') == '\\ta\\n  b'\n    assert candidate('  x\\n  \\n  y') == 'x\\n\\ny'\n"),
    ("html/__init__.py", "escape", "", "    assert candidate('<a href=\"x\">&</a>') == '&lt;a href=&quot;x&quot;&gt;&amp;&lt;/a&gt;'\n    assert candidate(\"it's\") == 'it&#x27;s'\n    assert candidate('\"q\"', quote=False) == '\"q\"'\n"),
    ("statistics.py", "median", "from statistics import StatisticsError\n\n\n", "    assert candidate([1, 3, 5]) == 3\n    assert candidate([1, 3, 5, 7]) == 4.0\n    assert candidate([7, 1, 3]) == 3\n    try:\n        candidate([])\n    except StatisticsError:\n        pass\n    else:\n        raise AssertionError('empty data must raise')\n"),
    ("statistics.py", "median_low", "from statistics import StatisticsError\n\n\n", "    assert candidate([1, 3, 5]) == 3\n    assert candidate([1, 3, 5, 7]) == 3\n    assert candidate([9, 2]) == 2\n"),
    ("statistics.py", "median_high", "from statistics import StatisticsError\n\n\n", "    assert candidate([1, 3, 5]) == 3\n    assert candidate([1, 3, 5, 7]) == 5\n    assert candidate([9, 2]) == 9\n"),
    ("genericpath.py", "commonprefix", "import os\n\n\n", "    assert candidate(['/usr/lib', '/usr/local']) == '/usr/l'\n    assert candidate([]) == ''\n    assert candidate(['abc', 'abd', 'ab']) == 'ab'\n    assert candidate([['a', 'b'], ['a', 'c']]) == ['a']\n"),
    ("genericpath.py", "_splitext", "", "    assert candidate('a/b.txt', '/', None, '.') == ('a/b', '.txt')\n    assert candidate('.bashrc', '/', None, '.') == ('.bashrc', '')\n    assert candidate('x.tar.gz', '/', None, '.') == ('x.tar', '.gz')\n    assert candidate('a.b/c', '/', None, '.') == ('a.b/c', '')\n"),
    ("bisect.py", "bisect_left", "", "    assert candidate([1, 2, 2, 3], 2) == 1\n    assert candidate([1, 2, 2, 3], 4) == 4\n    assert candidate([], 1) == 0\n    assert candidate([1, 2, 3], 2, lo=2) == 2\n    assert candidate([(1, 'a'), (3, 'b')], 2, key=lambda t: t[0]) == 1\n"),
    ("bisect.py", "bisect_right", "", "    assert candidate([1, 2, 2, 3], 2) == 3\n    assert candidate([1, 2, 2, 3], 0) == 0\n    assert candidate([1, 2, 3], 3, hi=2) == 2\n"),
    ("shlex.py", "quote", FIND_UNSAFE, "    assert candidate('') == \"''\"\n    assert candidate('abc') == 'abc'\n    assert candidate('a b') == \"'a b'\"\n    assert candidate(\"it's\") == \"'it'\\\"'\\\"'s'\"\n"),
]


def split_function(path: Path, name: str) -> tuple[str, str]:
    """(def line + docstring, body after the docstring) of the top-level function ``name``."""
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines(keepends=True)
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            doc = node.body[0]
            assert isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant), f"{name}: no docstring"
            prompt = "".join(lines[node.lineno - 1 : doc.end_lineno])
            body = "".join(lines[doc.end_lineno : node.end_lineno])
            return prompt, body
    raise SystemExit(f"{path}: no top-level function {name}")


def main() -> None:
    rows = []
    for module, name, context, check in PROBLEMS:
        prompt, body = split_function(STDLIB / module, name)
        rows.append({"task_id": f"stdlib/{module.removesuffix('.py').replace('/__init__', '')}.{name}", "prompt": context + prompt,
                     "canonical_solution": body, "test": f"def check(candidate):\n{check}", "entry_point": name})
    OUT.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    print(f"{len(rows)} problems -> {OUT}")


if __name__ == "__main__":
    main()
