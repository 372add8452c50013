"""README.md's command blocks run as written.

Every fenced block of README.md is found; shell blocks (```bash, ```sh, ```shell, ```console) are
run in README order, each with ``bash -e -o pipefail``, in one scratch copy of the checkout (so a
block can use what an earlier one wrote: ``models.json``, ``out/``), with the ``wattlas`` and
``python`` of the environment running these tests first on PATH and ``../shared`` beside the copy
pointing at the real one.

Whether a block runs is decided only by a visible marker, an HTML comment on the line above it:

    <!-- readme-test: MARKER[, MARKER] [- free-text reason] -->

``setup``              the install / test / activate commands: checked as text here, never run
                       (running them would install into, or recurse through, this environment);
``needs-gpu``          needs real GPUs through NVML (or root): skipped;
``needs-torch``        needs PyTorch (the ``gpu`` extra): skipped when ``torch`` is not importable;
``needs-shared-data``  reads ``../shared/data/...``: skipped when that directory or a file the
                       block names is absent;
``slow``               a reproduction of measured figures that takes minutes or writes hundreds of
                       MB: skipped unless ``WATTLAS_README_SLOW=1``;
``synopsis``           a non-shell block showing a command's usage (optional arguments in
                       brackets): allowed to look like a command.

A block nobody marked is run, and fails the test if it fails; an untagged fence, an unknown
marker, a ``text`` block that looks like commands without ``synopsis``, an unmarked block reading
``../shared/data``, or a runnable block that would ``pip install`` also fail.
``WATTLAS_README_KEEP=1`` keeps the scratch directory (its path is printed).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SHARED = ROOT.parent / "shared"
SHELL_LANGS = {"bash", "sh", "shell", "console"}
MARKERS = {"setup", "needs-gpu", "needs-torch", "needs-shared-data", "slow", "synopsis"}
MARKER_LINE = re.compile(r"<!--\s*readme-test:\s*(?P<body>.*?)\s*-->")
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<lang>[\w+-]*)\s*$")
SHARED_REF = re.compile(r"\.\./shared/data/[^\s'\"\\)]+")
LOOKS_LIKE_COMMAND = re.compile(r"^\s*(\$\s+)?(wattlas|python3?|pip3?|sudo)\s", re.MULTILINE)
PIP_INSTALL = re.compile(r"\bpip3?\s+install\b")
BLOCK_TIMEOUT_S = 900  # a hang guard, not a speed check: the longest block takes ~1 min on 2 busy cores
# What a fresh checkout holds at its top level (generated files a developer may have lying around in
# the working tree - models.json, out/, telemetry/ - must not mask a README step that is missing).
CHECKOUT_FILES = ("README.md", "pyproject.toml", ".gitignore")
CHECKOUT_DIRS = ("examples", "sample_traces", "benchmarks", "docs", ".ci")
SKIP_ALWAYS = {"__pycache__"}


@dataclass(frozen=True)
class Block:
    """One fenced block of README.md."""

    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    heading: str
    markers: frozenset = field(default_factory=frozenset)
    reason: str = ""  # the marker's free text
    marker_error: str = ""

    @property
    def ident(self) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", self.heading.lower()).strip("-")[:40] or "top"
        return f"L{self.line}-{slug}"

    def script(self) -> str:
        """The shell text to run: the block as written (``console``: the ``$ `` lines and their
        continuations)."""
        if self.lang != "console":
            return self.text
        out, continuing = [], False
        for line in self.text.splitlines():
            if continuing or line.startswith("$ "):
                out.append(line[2:] if line.startswith("$ ") and not continuing else line)
                continuing = line.rstrip().endswith("\\")
        return "\n".join(out) + "\n"


def parse_readme(text: str) -> list[Block]:
    """Every fenced block, with the marker of the line above it (blank lines between allowed)."""
    lines = text.splitlines()
    blocks, heading, i = [], "", 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        match = FENCE.match(line)
        if not match:
            i += 1
            continue
        fence = match.group("fence")
        end = i + 1
        while end < len(lines) and lines[end].strip() != fence:
            end += 1
        body = "\n".join(lines[i + 1:end]) + "\n"
        above = i - 1
        while above >= 0 and not lines[above].strip():
            above -= 1
        markers, reason, error = frozenset(), "", ""
        marker = MARKER_LINE.fullmatch(lines[above].strip()) if above >= 0 else None
        if marker:
            names, _, reason = marker.group("body").partition(" - ")
            markers = frozenset(m for m in re.split(r"[,\s]+", names.strip()) if m)
            unknown = markers - MARKERS
            if unknown or not markers:
                error = f"unknown readme-test marker(s) {sorted(unknown) or names!r} (known: {sorted(MARKERS)})"
        if match.group("indent"):
            error = error or "indented fence: this test reads only fences at the start of a line"
        blocks.append(Block(i + 1, match.group("lang").lower(), body, heading, markers, reason.strip(), error))
        i = end + 1
    return blocks


BLOCKS = parse_readme(README.read_text(encoding="utf-8"))
SHELL_BLOCKS = [b for b in BLOCKS if b.lang in SHELL_LANGS]


def problem(block: Block) -> str | None:
    """Why a block breaks the rules (module docstring), or None."""
    if block.marker_error:
        return block.marker_error
    if block.lang not in SHELL_LANGS:
        if not block.lang:
            return "untagged fence: tag it ```bash to have it run, or ```text for output"
        if "synopsis" not in block.markers and LOOKS_LIKE_COMMAND.search(block.text):
            return (f"a ```{block.lang} block that looks like commands: make it ```bash (run), "
                    "or mark it <!-- readme-test: synopsis -->")
        return None
    if "synopsis" in block.markers:
        return "a synopsis is not run: make it a ```text block"
    refs = SHARED_REF.findall(block.text)
    if refs and "needs-shared-data" not in block.markers:
        return "reads ../shared/data: mark it <!-- readme-test: needs-shared-data -->"
    if "needs-shared-data" in block.markers and not refs:
        return "marked needs-shared-data but names no ../shared/data/... file"
    if PIP_INSTALL.search(block.text) and not block.markers & {"setup", "needs-gpu"}:
        return "runs pip install, which would change the environment running the tests: mark it setup or needs-gpu"
    return None


def decision(block: Block) -> tuple[str, str]:
    """("run", "") or ("skip", the reason) for a shell block without a problem."""
    markers = block.markers
    because = f" ({block.reason})" if block.reason else ""
    if "setup" in markers:
        return "skip", "set-up command: checked as text by test_setup_blocks, never run here"
    if "needs-gpu" in markers:
        return "skip", f"needs a GPU through NVML{because}"
    if "needs-torch" in markers and importlib.util.find_spec("torch") is None:
        return "skip", f"needs PyTorch (pip install -e '.[gpu]'), not installed{because}"
    if "needs-shared-data" in markers:
        if not (SHARED / "data").is_dir():
            return "skip", f"needs ../shared/data ({SHARED / 'data'} is absent){because}"
        missing = sorted({ref for ref in SHARED_REF.findall(block.text) if not (ROOT / ref).exists()})
        if missing:
            return "skip", f"needs {', '.join(missing)} (absent){because}"
    if "slow" in markers and os.environ.get("WATTLAS_README_SLOW") != "1":
        return "skip", f"slow{because}: set WATTLAS_README_SLOW=1 to run it"
    return "run", ""


def _copy_checkout(dest: Path) -> None:
    """What a user's fresh checkout holds that README commands refer to (CHECKOUT_*), and the
    Python packages (a directory with __init__.py), without caches or generated output."""
    dest.mkdir(parents=True)
    ignore = shutil.ignore_patterns(*SKIP_ALWAYS)
    for name in CHECKOUT_FILES:
        if (ROOT / name).is_file():
            shutil.copy2(ROOT / name, dest / name)
    for entry in sorted(ROOT.iterdir()):
        if entry.is_dir() and (entry.name in CHECKOUT_DIRS or (entry / "__init__.py").is_file()):
            shutil.copytree(entry, dest / entry.name, ignore=ignore, symlinks=True)


class Runner:
    """Runs the runnable blocks in README order in one scratch checkout, each at most once."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self.checkout = scratch / "checkout"
        _copy_checkout(self.checkout)
        if SHARED.is_dir():
            (scratch / "shared").symlink_to(SHARED, target_is_directory=True)
        bindir = Path(sys.executable).parent
        self.env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
                    "VIRTUAL_ENV": str(bindir.parent), "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1"}
        for name in ("WATTLAS_MARKER_FILE", "PYTHONHOME"):
            self.env.pop(name, None)
        self.wattlas = shutil.which("wattlas", path=self.env["PATH"])
        self.results: dict[int, tuple[bool, str, float]] = {}  # line -> (passed, output tail, seconds)

    def run_through(self, block: Block) -> tuple[bool, str, float]:
        """Run every runnable block up to and including ``block`` that has not run yet."""
        assert self.wattlas and Path(self.wattlas).parent == Path(sys.executable).parent, (
            f"`wattlas` is not installed beside {sys.executable} (found: {self.wattlas}): "
            "install wattlas into the environment running the tests")
        for earlier in SHELL_BLOCKS:
            if earlier.line > block.line:
                break
            if earlier.line not in self.results and problem(earlier) is None and decision(earlier)[0] == "run":
                self.results[earlier.line] = self._run(earlier)
        return self.results[block.line]

    def _run(self, block: Block) -> tuple[bool, str, float]:
        start = time.monotonic()
        proc = subprocess.Popen(["bash", "-e", "-o", "pipefail", "-c", block.script()], cwd=self.checkout,
                                env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            output, _ = proc.communicate(timeout=BLOCK_TIMEOUT_S)
            passed = proc.returncode == 0
            status = f"exit status {proc.returncode}"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the block's whole process group: wattlas, dask workers
            output, _ = proc.communicate()
            passed, status = False, f"still running after {BLOCK_TIMEOUT_S} s (killed)"
        seconds = time.monotonic() - start
        return passed, f"{status} after {seconds:.1f} s; last output:\n{output[-4000:]}", seconds

    def failed_before(self, block: Block) -> list[str]:
        return [f"L{line}" for line, (ok, _, _) in sorted(self.results.items()) if line < block.line and not ok]


@pytest.fixture(scope="module")
def runner():
    scratch = Path(tempfile.mkdtemp(prefix="wattlas-readme-"))
    try:
        yield Runner(scratch)
    finally:
        if os.environ.get("WATTLAS_README_KEEP") == "1":
            print(f"\nREADME scratch checkout kept in {scratch / 'checkout'}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


def test_every_block_is_runnable_or_marked():
    assert SHELL_BLOCKS, "README.md has no ```bash blocks: did the parser break?"
    problems = [f"README.md line {b.line} ({b.heading}): {problem(b)}" for b in BLOCKS if problem(b)]
    assert not problems, "\n".join(problems)


def _venv_dir(text: str) -> str:
    match = re.search(r"\bpython3? -m venv (\S+)", text)
    assert match, f"the first set-up command must create a virtual environment (python3 -m venv DIR):\n{text}"
    return match.group(1).rstrip("/")


def test_setup_blocks():
    """The install command creates a venv before installing into it (Debian's system Python refuses
    pip: externally-managed-environment), the test command is the venv's pytest (and .ci/run's),
    and the activation the other blocks assume comes before them."""
    setup = [b for b in SHELL_BLOCKS if "setup" in b.markers]
    assert len(setup) >= 2, "the install and test commands must be marked <!-- readme-test: setup -->"
    install, tests = setup[0].text, setup[1].text
    venv = _venv_dir(install)
    created = re.search(r"\bpython3? -m venv ", install).start()
    installs = list(re.finditer(r"(\S*)\bpip3?\s+install\b", install))
    assert installs, f"the first set-up command installs nothing:\n{install}"
    for m in installs:
        who = m.group(1)  # ".venv/bin/" of .venv/bin/pip; empty for a bare pip or "-m pip"
        if not who:
            before = install[:m.start()].split()
            who = before[-2] if before[-1:] == ["-m"] and len(before) >= 2 else "(bare pip)"
        assert who.startswith(f"{venv}/bin/"), f"pip must be the venv's ({venv}/bin/python -m pip), not {who!r}"
        assert m.start() > created, "pip install comes before the venv is created"
    assert "--break-system-packages" not in install and "sudo" not in install
    assert re.search(rf"{re.escape(venv)}/bin/wattlas demo\b", install), "the first command should end with the demo"
    test_cmd = re.search(rf"{re.escape(venv)}/bin/python -m pytest[^\n]*", tests)
    assert test_cmd, f"the second set-up command must run the venv's pytest:\n{tests}"
    ci = ROOT / ".ci" / "run"
    if ci.exists():  # the README says .ci/run runs exactly this command
        assert test_cmd.group(0).strip() in ci.read_text(encoding="utf-8"), f".ci/run does not run {test_cmd.group(0)!r}"
    activate = [b for b in setup if re.search(rf"(^|\s)(\.|source) {re.escape(venv)}/bin/activate\b", b.text)]
    assert activate, f"the README must say to activate the venv (. {venv}/bin/activate) for the other commands"
    first_run = next((b for b in SHELL_BLOCKS if "setup" not in b.markers), None)
    assert first_run is None or activate[0].line < first_run.line


@pytest.mark.parametrize("block", SHELL_BLOCKS, ids=[b.ident for b in SHELL_BLOCKS])
def test_readme_block(runner, block):
    why = problem(block)
    assert why is None, f"README.md line {block.line}: {why}"
    action, reason = decision(block)
    if action == "skip":
        pytest.skip(f"README.md line {block.line}: {reason}")
    passed, output, seconds = runner.run_through(block)
    earlier = runner.failed_before(block)
    assert passed, (f"README.md line {block.line} ({block.heading}) failed"
                    + (f" (earlier blocks failed too: {', '.join(earlier)})" if earlier else "")
                    + f":\n{block.text}\n{output}")


def test_replaying_recipe_builds_the_demo_bundle(runner, tmp_path):
    """"Replaying traces" says its profile + fit are the demo's bundle: same models, same scores."""
    writer = next((b for b in SHELL_BLOCKS if re.search(r"characterize fit profile\.parquet\b.*-o models\.json", b.text)),
                  None)
    assert writer is not None, "no README block fits profile.parquet into models.json"
    if decision(writer)[0] != "run":
        pytest.skip(f"the block at line {writer.line} does not run here")
    passed, output, _ = runner.run_through(writer)
    assert passed, output
    from toolkit import demo

    demo_bundle = demo._profile_and_characterize(tmp_path)  # what `wattlas demo` fits, as it fits it
    ours = json.loads((runner.checkout / "models.json").read_text())
    theirs = json.loads(Path(demo_bundle).read_text())
    for key in ("models", "validation"):
        assert ours[key] == theirs[key], f"README's models.json differs from the demo's bundle in {key!r}"
