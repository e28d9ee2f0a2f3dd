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

Those paragraphs are mostly under 256 tokens. For studies at longer lengths it also
downloads `r-cran-janeaustenr` (Jane Austen's six novels, one line per element of an R
character vector) and writes

    austen-passages.jsonl

{"source": "emma", "text": "..."}: runs of consecutive paragraphs (kept apart by a blank
line, as in the book) of 1400-2200 characters, which is about 300-500 tokens; chapter and
volume headings end a run. Again every run that qualifies, then an even spread of
--austen-n.

    scripts/fetch_eval_text.py [--n 120] [--austen-n 120]
"""

import argparse
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
import zlib
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


AUSTEN_PACKAGE = "r-cran-janeaustenr"
AUSTEN_RDB = "usr/lib/R/site-library/janeaustenr/data/Rdata.rdb"


def fetch_austen(dest: Path) -> Path:
    rdb = dest / AUSTEN_PACKAGE / AUSTEN_RDB
    if rdb.is_file():
        return rdb
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        subprocess.run(["apt-get", "download", AUSTEN_PACKAGE], cwd=tmp, check=True)
        debs = list(Path(tmp).glob(f"{AUSTEN_PACKAGE}_*.deb"))
        if not debs:
            sys.exit(f"apt-get download {AUSTEN_PACKAGE} produced no .deb")
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(dest / AUSTEN_PACKAGE)], check=True)
    if not rdb.is_file():
        sys.exit(f"{rdb} missing after extracting {AUSTEN_PACKAGE}")
    return rdb


def r_character_vectors(rdb: Path):
    """The character vectors of an R lazy-load database, in file order.

    Without R: the .rdb is a sequence of objects, each a 4-byte big-endian length and a
    zlib stream holding R's XDR serialisation. Each data set here is a plain STRSXP:
    header, then (flags, length) and, per element, a CHARSXP (flags, length, bytes;
    length -1 is NA). Anything else is skipped rather than guessed at.
    """
    data = rdb.read_bytes()
    pos = 0
    while pos + 4 < len(data):
        d = zlib.decompressobj()
        body = d.decompress(data[pos + 4 :])
        pos = len(data) - len(d.unused_data)
        if not body.startswith(b"X\n"):
            continue
        i = 2 + 12  # format, then version, writer version, minimal reader version
        (nelen,) = struct.unpack(">i", body[i : i + 4])
        i += 4 + nelen  # native encoding name (serialisation version 3)
        flags, n = struct.unpack(">ii", body[i : i + 8])
        i += 8
        if flags & 0xFF != 16:  # not a character vector
            continue
        out = []
        for _ in range(n):
            _flags, length = struct.unpack(">ii", body[i : i + 8])
            i += 8
            if length < 0:
                out.append("")
                continue
            out.append(body[i : i + length].decode("utf-8", errors="replace"))
            i += length
        yield out


AUSTEN_TITLES = ["sensesensibility", "prideprejudice", "mansfieldpark", "emma", "northangerabbey", "persuasion"]
HEADING = re.compile(r"^(CHAPTER|VOLUME|Chapter|Volume)\b|^[A-Z0-9 .,:;'-]+$")


def austen_runs(lines):
    """Runs of consecutive paragraphs of 1400-2200 characters (see the module doc)."""
    paras, cur = [], []
    for line in lines + [""]:
        if line.strip():
            cur.append(line.strip())
        elif cur:
            paras.append(" ".join(cur))
            cur = []
    run, size = [], 0
    for p in paras:
        if HEADING.match(p) or len(p) > 2200:
            run, size = [], 0
            continue
        if size + len(p) > 2200:
            run, size = [], 0
        run.append(p)
        size += len(p) + 2
        if size >= 1400:
            text = "\n\n".join(run)
            if len(re.findall(r"[.!?](?:[\s\"']|$)", text)) >= 3:
                yield text
            run, size = [], 0


def write_austen(dest: Path, n: int) -> None:
    vectors = list(r_character_vectors(fetch_austen(dest)))
    # The lazy-load database holds the novels in alphabetical order of their names
    # (emma, mansfieldpark, northangerabbey, persuasion, prideprejudice,
    # sensesensibility); name them so, for the "source" field.
    names = sorted(AUSTEN_TITLES)
    if len(vectors) != len(names):
        sys.exit(f"expected {len(names)} novels in the janeaustenr data, found {len(vectors)}")
    found = [{"source": name, "text": t} for name, lines in zip(names, vectors) for t in austen_runs(lines)]
    if len(found) < n:
        sys.exit(f"only {len(found)} Austen passages qualify; asked for {n}")
    step = len(found) / n
    chosen = [found[int(i * step)] for i in range(n)]
    out = dest / "austen-passages.jsonl"
    with open(out, "w", encoding="utf-8") as f:
        for p in chosen:
            f.write(json.dumps(p, ensure_ascii=False) + "\n")
    print(f"{out}: {len(chosen)} passages (of {len(found)} that qualify)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=120, help="passages to keep")
    ap.add_argument("--austen-n", type=int, default=120, help="Jane Austen passages to keep (0: none)")
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
    if args.austen_n > 0:
        write_austen(dest, args.austen_n)


if __name__ == "__main__":
    main()
