"""README.md runs as written: every Python and shell code block is run, in README order, against the built-in tiny
models, and a block that fails fails its test.

What runs: fenced blocks tagged ```python (each in a fresh interpreter: a pasted block must stand alone) and ```bash,
```sh, ```shell or untagged ones (bash -e -o pipefail), all in one scratch directory, so that a later block finds
the exports an earlier one wrote. Blocks tagged otherwise (```text, ```json, ```yaml) are shown, not run.
A block that cannot run here is marked by an HTML comment on the line right before its fence, saying why:

    <!-- readme-test: skip (needs an NVIDIA GPU and TensorRT) -->

and is reported as skipped with that reason (a GPU, TensorRT, Ray, the network: package installs, real checkpoints
from the hub). Only fences and markers are read, so the prose may change freely; a new block runs unless marked.

The environment of a block: PATH starts with this interpreter's bin folder (the installed rerank-export and
rerank-serve), `.venv` in the scratch directory is this environment, RERANK_CACHE is the tests' cache, the hub cache
is empty and offline (nothing is downloaded), port 8080 is replaced by a free loopback port, and every process a
block leaves running (a server started with `&`) is stopped when the module's tests end.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from serve_util import free_port

README = Path(__file__).resolve().parent.parent / "README.md"
SHELL = {"", "bash", "sh", "shell"}
MARKER = re.compile(r"<!--\s*readme-test:\s*skip\s*\((?P<reason>[^)]+)\)\s*-->")
FENCE = re.compile(r"^(?P<fence>```+)(?P<lang>[\w+-]*)\s*$")
BLOCK_TIMEOUT_S = 300


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence, 1-based
    lang: str  # "python" or "bash"; anything else is not run
    code: str
    skip: str | None  # the marker's reason

    @property
    def id(self) -> str:
        return f"README.md:{self.line}:{self.lang}"


def parse(text: str) -> tuple[list[Block], list[int]]:
    """(every fenced block, the lines of markers that precede no fence)."""
    lines = text.splitlines()
    blocks: list[Block] = []
    stray: list[int] = []
    pending: tuple[int, str] | None = None  # a marker waiting for its fence
    i = 0
    while i < len(lines):
        marker, fence = MARKER.fullmatch(lines[i].strip()), FENCE.match(lines[i])  # a marker is a line of its own
        if marker:
            if pending:
                stray.append(pending[0])
            pending = (i + 1, marker.group("reason").strip())
        elif fence:
            end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == fence.group("fence")), len(lines))
            lang = fence.group("lang").lower()
            blocks.append(Block(i + 1, "bash" if lang in SHELL else lang, "\n".join(lines[i + 1:end]) + "\n",
                                pending[1] if pending else None))
            pending, i = None, end
        elif lines[i].strip() and pending:  # prose between a marker and its fence
            stray.append(pending[0])
            pending = None
        i += 1
    if pending:
        stray.append(pending[0])
    return blocks, stray


BLOCKS, STRAY = parse(README.read_text(encoding="utf-8"))
RUN = [b for b in BLOCKS if b.lang in ("python", "bash")]


class Session:
    """Runs the README's blocks in order in one scratch directory; each block at most once."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.work = root / "work"
        self.work.mkdir()
        (self.work / ".venv").symlink_to(Path(sys.executable).parent.parent)
        self.port = str(free_port())
        bin_dir = str(Path(sys.executable).parent)
        self.env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
                    "HF_HUB_CACHE": str(root / "empty-hub"), "HF_HUB_OFFLINE": "1", "NO_PROXY": "*", "no_proxy": "*",
                    "PYTHONUNBUFFERED": "1"}
        self.results: dict[int, str | None] = {}  # block index -> None (passed) or why it failed
        self.groups: list[int] = []  # process groups of shell blocks, stopped at the end

    def run_through(self, index: int) -> None:
        for k in range(index + 1):
            if k not in self.results and RUN[k].skip is None:
                self.results[k] = self._run(k, RUN[k])
        failure = self.results.get(index)
        if failure:
            earlier = [RUN[k].id for k in range(index) if self.results.get(k)]
            pytest.fail(failure + (f"\n(it ran after failed blocks {earlier})" if earlier else ""), pytrace=False)

    def _run(self, k: int, block: Block) -> str | None:
        code = block.code.replace("8080", self.port)
        script = self.root / f"block-{k}.{'py' if block.lang == 'python' else 'sh'}"
        script.write_text(code)
        command = [sys.executable, str(script)] if block.lang == "python" else ["bash", "-e", "-o", "pipefail",
                                                                                str(script)]
        out, err = self.root / f"block-{k}.out", self.root / f"block-{k}.err"
        # output to files, not pipes: a server a block starts with & keeps its descriptors after the block ends
        with out.open("w") as stdout, err.open("w") as stderr:
            proc = subprocess.Popen(command, cwd=self.work, env=self.env, stdout=stdout, stderr=stderr,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
            self.groups.append(proc.pid)
            try:
                rc = proc.wait(timeout=BLOCK_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                rc = None
        if rc == 0:
            return None
        what = f"timed out after {BLOCK_TIMEOUT_S} s" if rc is None else f"exited {rc}"
        return (f"{block.id} {what}:\n{block.code}\n--- stdout ---\n{out.read_text()[-3000:]}\n--- stderr ---\n"
                f"{err.read_text()[-3000:]}")

    def close(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            live = []
            for group in self.groups:
                try:
                    os.killpg(group, sig)
                    live.append(group)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 10
            while live and time.monotonic() < deadline and any(_alive(g) for g in live):
                time.sleep(0.1)


def _alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
        return True
    except ProcessLookupError:
        return False


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    # the built-in models the blocks use come from the tests' cache (conftest's RERANK_CACHE), made once there
    s = Session(tmp_path_factory.mktemp("readme"))
    yield s
    s.close()


@pytest.mark.parametrize("index", range(len(RUN)), ids=[b.id for b in RUN])
def test_readme_block_runs(index: int, session: Session) -> None:
    block = RUN[index]
    if block.skip is not None:
        pytest.skip(f"{block.id}: {block.skip}")
    session.run_through(index)


def test_every_marker_belongs_to_a_block_and_says_why() -> None:
    assert STRAY == [], f"README.md lines {STRAY}: a readme-test marker must be the line right before a code fence"
    assert all(b.skip.strip() for b in BLOCKS if b.skip is not None)
    assert len(RUN) >= 8 and sum(b.skip is None for b in RUN) >= 6  # the README keeps runnable examples


def test_the_parser_reads_fences_and_markers_only() -> None:
    text = ("Prose with ``` inline and <!-- other comment -->, `<!-- readme-test: skip (quoted) -->` in prose\n"
            "<!-- readme-test: skip (needs a GPU) -->\n```bash\nnvidia-smi\n```\n"
            "```python\nprint(1)\n```\n```text\noutput\n```\n"
            "<!-- readme-test: skip (stray) -->\nprose\n```\necho ok\n```\n")
    blocks, stray = parse(text)
    assert [(b.line, b.lang, b.code, b.skip) for b in blocks] == [
        (3, "bash", "nvidia-smi\n", "needs a GPU"), (6, "python", "print(1)\n", None), (9, "text", "output\n", None),
        (14, "bash", "echo ok\n", None)]
    assert stray == [12]
