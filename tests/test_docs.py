"""The README and docs/: every relative link and #anchor resolves, and every flag they show exists."""

import dataclasses
import re
from pathlib import Path

import pytest

from oat_cpgd.args import CPGDArgs

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
FLAG = re.compile(r"(?<![\w-])--([a-zA-Z][\w-]*)")
# Flags of other commands the pages show: ray start, pip, tensorboard, the models' and data scripts,
# scripts/gpu_check.sh, examples/smollm2_arithmetic.py, the benchmarks, OpenRLHF's --ds.*; --help, and the
# nested spelling (--training.learning_rate) shown as what not to use.
OTHER_FLAGS = {"address", "head", "port", "resources", "no-deps", "no-index", "logdir", "out", "input", "local_dir",
               "train_size", "test_size", "cpu", "prepare-wheels", "steps", "seeds", "ds", "help", "training", "calls",
               "replay_map", "settings", "rounds", "warmup", "no-memory", "batch", "model", "new_tokens",
               "no-floor", "axes"}  # fmt: skip


def prose(page: Path) -> str:
    """The page without its fenced code blocks (whose `# comments` are not headings)."""
    return re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S)


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation but hyphens dropped, spaces to hyphens."""
    headings = re.findall(r"^#+ (.+)$", prose(page), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_links_resolve(page):
    for target in LINK.findall(prose(page)):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.name}: {target} does not exist"
        if anchor:
            assert anchor in anchors(linked), f"{page.name}: no heading #{anchor} in {linked.name}"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_flags_exist(page):
    flags = {field.name for field in dataclasses.fields(CPGDArgs)}
    shown = set(FLAG.findall(page.read_text())) - OTHER_FLAGS
    unknown = {flag for flag in shown if flag.replace("-", "_").removeprefix("no_") not in flags}
    assert not unknown, f"{page.name} shows flags run_cpgd does not have: {sorted(unknown)}"
