#!/usr/bin/env bash
# Install LiteLLM's proxy into its own venv, bench/.venv-litellm (git-ignored), for
# bench/compare.py, which runs this script itself when that venv is missing or unfinished.
# LiteLLM is a peer we measure against, never a dependency of modelyard: it must not go into
# the project's .venv.
#
#   bench/setup_litellm.sh                      # the newest litellm[proxy] pip can install
#   LITELLM_VERSION=1.106.12 bench/setup_litellm.sh    # a pinned one
#   PYTHON=python3.11 bench/setup_litellm.sh
#
# Unpinned, pip picks the newest release whose `proxy` extra resolves on the package index
# (some releases pin companion packages, litellm-proxy-extras or litellm-enterprise, in versions
# the index may not serve); bench/compare.py prints the version it measured. 1.107.0 was a
# compromised release (withdrawn from PyPI) and is never installed. The file .complete in the
# venv marks a finished install.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv-litellm"
version="${LITELLM_VERSION:-}"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null 2>&1 || python=python3

if [[ "$version" == 1.107.0 ]]; then
    echo "refusing litellm 1.107.0 (a compromised release)" >&2
    exit 1
fi

if [[ -n "$version" ]]; then
    spec="litellm[proxy]==$version"
else
    spec="litellm[proxy]!=1.107.0"
fi

echo "installing $spec into $venv (with $python)" >&2
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet "$spec"
"$venv/bin/python" -c "import litellm.proxy.proxy_server" >/dev/null
installed="$("$venv/bin/python" -c 'from importlib.metadata import version; print(version("litellm"))')"
echo "$installed" >"$venv/.complete"
echo "litellm $installed ready in $venv" >&2
