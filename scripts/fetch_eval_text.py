#!/usr/bin/env python3
"""Fetch human-written evaluation text that nobody on this project wrote.

Downloads Debian's `python3.11-doc` package (the reST sources of the Python 3.11
documentation) with `apt-get download`, extracts it into the cache
($TOKENWISE_CACHE/data or ~/.cache/tokenwise/data), and writes

    python-doc-passages.jsonl

one JSON object per line, {"source": "tutorial/classes.rst.txt", "text": "..."}: prose
paragraphs of 500-1500 characters with at least three sentences, reST markup reduced to
plain text (roles such as :func:`len` become len, ``x`` becomes x). Code blocks,
directives, lists, tables and headings are skipped. The selection is deterministic
(files in sorted order, every paragraph that qualifies, then an even spread of --n).

    scripts/fetch_eval_text.py [--n 120]
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

PACKAGE = "python3.11-doc"
SECTIONS = ["tutorial", "howto", "faq", "library", "reference", "using"]


def cache_dir() -> Path:
    root = os.environ.get("TOKENWISE_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "tokenwise"
    return base / "data"


def fetch_sources(dest: Path) -> Path:
    sources = dest / "python3.11-doc" / "usr/share/doc/python3.11/html/_sources"
    if sources.is_dir():
        return sources
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        subprocess.run(["apt-get", "download", PACKAGE], cwd=tmp, check=True)
        debs = list(Path(tmp).glob(f"{PACKAGE}_*.deb"))
        if not debs:
            sys.exit(f"apt-get download {PACKAGE} produced no .deb")
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(dest / "python3.11-doc")], check=True)
    if not sources.is_dir():
        sys.exit(f"{sources} missing after extracting {PACKAGE}")
    return sources


ROLE = re.compile(r":[a-z]+(?::[a-z]+)?:`!?~?([^`<]*?)(?:\s*<[^>]*>)?`")
LINK = re.compile(r"`([^`<]+?)\s*<[^>]*>`__?")
LITERAL = re.compile(r"``([^`]+)``")
EMPH = re.compile(r"\*\*?([^*]+)\*\*?")
REF = re.compile(r"`([^`]+)`_?")


def plain(text: str) -> str:
    text = ROLE.sub(r"\1", text)
    text = LINK.sub(r"\1", text)
    text = LITERAL.sub(r"\1", text)
    text = EMPH.sub(r"\1", text)
    text = REF.sub(r"\1", text)
    text = text.replace("::", ":")
    return re.sub(r"\s+", " ", text).strip()


def paragraphs(path: Path):
    block = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines() + [""]:
        if line.strip():
            block.append(line)
            continue
        if block:
            yield block
        block = []


def is_prose(block) -> bool:
    first = block[0]
    if first.startswith((" ", "\t", "..", ":", "*", "-", "=", "+", "|", ">>>", "#", "`")):
        return False
    if re.match(r"^\d+\.|^[a-z]\)", first):
        return False
    # A heading's underline, a table rule, or a literal block to follow.
    if any(re.fullmatch(r"[=\-~^*+#\"]{3,}", l.strip()) for l in block):
        return False
    if any(l.startswith((" ", "\t")) for l in block):
        return False
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=120, help="passages to keep")
    args = ap.parse_args()
    dest = cache_dir()
    sources = fetch_sources(dest)
    found = []
    for section in SECTIONS:
        for path in sorted((sources / section).rglob("*.rst.txt")):
            for block in paragraphs(path):
                if not is_prose(block):
                    continue
                text = plain(" ".join(l.strip() for l in block))
                if text.endswith("::") or text.endswith(":"):
                    continue
                sentences = len(re.findall(r"[.!?](?:\s|$)", text))
                if 500 <= len(text) <= 1500 and sentences >= 3:
                    found.append({"source": str(path.relative_to(sources)), "text": text})
    if len(found) < args.n:
        sys.exit(f"only {len(found)} passages qualify; asked for {args.n}")
    step = len(found) / args.n
    chosen = [found[int(i * step)] for i in range(args.n)]
    out = dest / "python-doc-passages.jsonl"
    with open(out, "w", encoding="utf-8") as f:
        for p in chosen:
            f.write(json.dumps(p, ensure_ascii=False) + "\n")
    print(f"{out}: {len(chosen)} passages (of {len(found)} that qualify)")


if __name__ == "__main__":
    main()
