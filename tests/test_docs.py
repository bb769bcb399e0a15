"""The documentation stays a user's documentation: a short README that starts with the two
commands a fresh clone needs, no development history in what ships, and no dead links.

Nothing is imported from streamrec; every file is read as text.
"""

from __future__ import annotations

import io
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"

MAX_README_LINES = 250
# the main job from a fresh clone, with nothing beside it
SERVE = ("python3 -m venv .venv && .venv/bin/pip install -e '.[openvino]' && "
         ".venv/bin/streamrec serve --source demo/clips/arm_wrestling.mp4 --loop")

# words that speak of how the project was made, not of the product
FORBIDDEN = [
    re.compile(r"\bsessions?\b", re.IGNORECASE),
    re.compile(r"\bthe issue\b", re.IGNORECASE),
    re.compile(r"\bthe book's", re.IGNORECASE),
    re.compile(r"\bthis morning\b", re.IGNORECASE),
    re.compile(r"\blent machines?\b", re.IGNORECASE),
]
# an ONNX Runtime session is the runtime's own object, not development history
ONNX_SESSION = re.compile(r"\b(ONNX Runtime|onnxruntime|ort|inference) sessions?\b", re.IGNORECASE)
USES_ONNX_RUNTIME = re.compile(r"onnx", re.IGNORECASE)  # a module about ONNX: its "session" is ONNX Runtime's

TEXT_SUFFIXES = {".py", ".md", ".sh", ".toml", ".json", ".html", ".txt", ".csv"}
SCANNED = [README, DOCS, ROOT / "streamrec", ROOT / "benchmarks"]

# files a test writes (the browser test's screenshot): linked before they exist in a fresh clone
GENERATED = {"docs/dashboard.png"}


def fenced_blocks(text: str) -> list[str]:
    return re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)


def ci_test_command() -> str:
    """The command ``.ci/run`` runs, which the README must show as it is."""
    lines = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()]
    found = [ln for ln in lines if ln.startswith("python3 -m venv") and "pytest" in ln]
    assert len(found) == 1, f".ci/run: expected one 'python3 -m venv ... pytest' line, got {found}"
    return found[0]


def test_readme_is_short():
    n = len(README.read_text().splitlines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines; at most {MAX_README_LINES} (the rest belongs in docs/)"


def test_readme_starts_with_the_two_commands():
    blocks = fenced_blocks(README.read_text())
    assert len(blocks) >= 2, "README.md: expected its first two code blocks to hold the two commands"
    first, second = (b.splitlines() for b in blocks[:2])
    assert SERVE in first, f"README.md's first code block should start the main job from a fresh clone:\n{SERVE}"
    assert ci_test_command() in second, "README.md's second code block should be exactly the command .ci/run runs"


def text_files() -> list[Path]:
    out = []
    for top in SCANNED:
        files = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
        out += [p for p in files if p.suffix in TEXT_SUFFIXES and "__pycache__" not in p.parts]
    return out


def prose_of_python(path: Path) -> list[tuple[int, str]]:
    """The comments and string literals (docstrings among them) of a Python file, with their lines:
    the words there are read by people; names in the code are not checked."""
    out = []
    tokens = tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
    for tok in tokens:
        if tok.type in (tokenize.COMMENT, tokenize.STRING):
            out.append((tok.start[0], tok.string))
        elif getattr(tokenize, "FSTRING_MIDDLE", None) == tok.type:
            out.append((tok.start[0], tok.string))
    return out


def runtime_session(text: str, m: re.Match) -> bool:
    """``the session`` / ``its session`` (ONNX Runtime's object), not ``session 10`` nor ``this session``."""
    before = text[: m.start()].split()[-1:] or [""]
    return (m.group(0).lower().startswith("session") and before[0].lower() in {"the", "a", "an", "its", "one"}
            and not re.match(r"\s*\d", text[m.end():]))


def forbidden_hits(path: Path, root: Path = ROOT) -> list[tuple[str, int, str, str]]:
    """``(file, line, phrase, context)`` for each forbidden phrase in ``path``."""
    rel = path.relative_to(root).as_posix()
    if path.suffix == ".py":
        chunks = prose_of_python(path)
        onnx_file = bool(USES_ONNX_RUNTIME.search(path.name + path.read_text()))
    else:
        chunks = list(enumerate(path.read_text(errors="replace").splitlines(), 1))
        onnx_file = False
    hits = []
    for line, text in chunks:
        text = ONNX_SESSION.sub("", text)
        for rx in FORBIDDEN:
            for m in rx.finditer(text):
                if onnx_file and runtime_session(text, m):
                    continue  # a module that drives ONNX Runtime: "the session" is the runtime's
                hits.append((rel, line, m.group(0), text.strip()[:100]))
    return hits


def test_no_development_history_in_what_ships():
    hits = [f"{f}:{line}: {word!r} in {context!r}" for p in text_files() for f, line, word, context in forbidden_hits(p)]
    assert hits == [], "words about how the project was made, not about the product:\n" + "\n".join(hits)


def test_the_checker_reads_comments_and_strings_but_not_names(tmp_path):
    py = tmp_path / "m.py"
    py.write_text('"""Doc: as in Session 3."""\nsession = 1  # this morning\nx = "the issue"\n')
    assert [(line, word) for _, line, word, _ in forbidden_hits(py, tmp_path)] == [
        (1, "Session"), (2, "this morning"), (3, "the issue")]
    onnx = tmp_path / "o.py"
    onnx.write_text('import onnxruntime as ort\n# the session holds the model\ns = ort.InferenceSession("m")  # session 3\n')
    assert [(line, word) for _, line, word, _ in forbidden_hits(onnx, tmp_path)] == [(3, "session")]
    md = tmp_path / "n.md"
    md.write_text("An ONNX Runtime session. Measured in session 4 on a lent machine.\n")
    assert [word for _, _, word, _ in forbidden_hits(md, tmp_path)] == ["session", "lent machine"]


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def relative_links(md: Path) -> list[str]:
    text = re.sub(r"^```.*?^```", "", md.read_text(), flags=re.MULTILINE | re.DOTALL)  # code is not links
    text = re.sub(r"`[^`\n]*`", "", text)
    targets = [m.group(1) for m in LINK.finditer(text)]
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t, re.IGNORECASE) and not t.startswith("#")]


@pytest.mark.parametrize("md", [README, *sorted(DOCS.glob("*.md"))], ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_at_files_that_exist(md):
    missing = []
    for target in relative_links(md):
        path = (md.parent / target.split("#", 1)[0]).resolve()
        rel = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)
        if not path.exists() and rel not in GENERATED:
            missing.append(target)
    assert missing == [], f"{md.relative_to(ROOT)}: links to files that do not exist: {missing}"


def test_docs_exist():
    for name in ("architecture", "performance", "deployment", "training", "api"):
        assert (DOCS / f"{name}.md").is_file(), f"docs/{name}.md is missing"


def extras() -> set[str]:
    import tomllib

    return set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])


def test_install_hints_work_from_the_clone():
    """streamrec is installed from its folder, not from a package index: no hint says
    ``pip install streamrec[...]``, and every extra a hint names exists."""
    from_index = re.compile(r"pip install\s+(-\S+\s+)*['\"]?streamrec\b")
    from_clone = re.compile(r"pip install -e ['\"]?\.\[([\w,-]+)\]")
    helper = re.compile(r"install_hint\(\s*['\"]([\w-]+)['\"]\s*\)")
    wrong, unknown = [], []
    for path in text_files():
        text = path.read_text(errors="replace")
        rel = path.relative_to(ROOT).as_posix()
        wrong += [f"{rel}: {m.group(0)}" for m in from_index.finditer(text)]
        named = [x for m in from_clone.finditer(text) for x in m.group(1).split(",")] + helper.findall(text)
        unknown += [f"{rel}: {x}" for x in named if x not in extras()]
    assert not wrong, f"install hints that need a package index: {wrong}"
    assert not unknown, f"extras that pyproject.toml does not declare: {unknown}"


def test_the_checker_finds_a_hint_from_an_index():
    rx = re.compile(r"pip install\s+(-\S+\s+)*['\"]?streamrec\b")
    assert rx.search("pip install 'streamrec[onnx]'") and rx.search("pip install -U streamrec")
    assert not rx.search("pip install -e '.[onnx]'")
