# Sourced by the project's scripts: create or reuse .venv and install radixpert into it.
# Installs are skipped when pyproject.toml and constraints.txt have not changed since the last one.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
py="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
  echo "[radixpert] creating virtual environment in .venv" >&2
  "$py" -m venv "$venv"
fi
stamp="$venv/.radixpert-installed"
want="$(cat "$root/pyproject.toml" "$root/constraints.txt" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[radixpert] installing radixpert[all,test] (torch pinned to the CPU build by constraints.txt)" >&2
  # pip warns once per package about this machine's empty local index folders; keep only real messages.
  "$venv/bin/python" -m pip install -q -c "$root/constraints.txt" -e "$root[all,test]" 2>&1 \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; } >&2
  echo "$want" > "$stamp"
fi
export PATH="$venv/bin:$PATH"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
export TRANSFORMERS_OFFLINE="${TRANSFORMERS_OFFLINE:-1}"
cd "$root"
