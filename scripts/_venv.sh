# Sourced by the project's scripts: create or reuse .venv and install radixpert into it from the
# lock, requirements.lock.txt: every package at its pinned version, nothing resolved, nothing
# newer, so a clone works the same on the day it is made and a year later. The install is
# skipped when pyproject.toml and the lock have not changed since the last one; packages that
# the lock does not hold are removed, and `pip check` confirms the set is consistent.
# The lock is made for Linux x86_64 and Python 3.11 (its header); `bash scripts/lock` remakes it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
lock="$root/requirements.lock.txt"
py="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
  echo "[radixpert] creating virtual environment in .venv" >&2
  "$py" -m venv "$venv"
fi
lock_python="$(sed -n 's/^# python: *//p' "$lock")"
have_python="$("$venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
if [ "$have_python" != "$lock_python" ]; then
  echo "[radixpert] warning: the lock is made for Python $lock_python; .venv has $have_python" \
    "(set PYTHON=python$lock_python, or install with pip install -e '.[all,test]' from the ranges)" >&2
fi
stamp="$venv/.radixpert-installed"
want="$(cat "$root/pyproject.toml" "$lock" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[radixpert] installing the locked packages (requirements.lock.txt) and radixpert[all,test]" >&2
  pip_quiet() {
    # pip warns once per package about this machine's empty local index folders; keep only real messages.
    # With pipefail the pipeline fails when pip does.
    "$venv/bin/python" -m pip "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; } >&2
  }
  pip_quiet install -q --no-deps -r "$lock"
  pip_quiet install -q --no-deps --no-build-isolation -e "$root"
  extra="$("$venv/bin/python" - "$lock" <<'PY'
import re, sys
from importlib import metadata
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
locked = {norm(l.split("==")[0]) for l in open(sys.argv[1]) if "==" in l and not l.startswith("#")}
have = {norm(d.metadata["Name"]) for d in metadata.distributions()}
print(" ".join(sorted(have - locked - {"radixpert", "pip"})))
PY
)"
  if [ -n "$extra" ]; then
    echo "[radixpert] removing packages the lock does not hold: $extra" >&2
    # shellcheck disable=SC2086
    pip_quiet uninstall -q -y $extra
  fi
  "$venv/bin/python" -m pip check >&2
  echo "$want" > "$stamp"
fi
export PATH="$venv/bin:$PATH"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
export TRANSFORMERS_OFFLINE="${TRANSFORMERS_OFFLINE:-1}"
cd "$root"
