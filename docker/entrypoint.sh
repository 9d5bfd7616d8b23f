#!/usr/bin/env bash
# The image's entrypoint (under tini). The first argument says what to run:
#   serve [ARGS...]   modelyard check "$CONFIG", then modelyard serve -c "$CONFIG" ARGS...
#   agent [ARGS...]   modelyard check "$CONFIG", then modelyard agent -c "$CONFIG" --node "$NODE" ARGS...
#   anything else     run as given (a shell, `modelyard ps`, `modelyard mode gamer gaming`)
# No argument: serve. A config that does not validate stops the container at once, with
# check's messages (file:line: key: what is wrong) and its exit status.
set -euo pipefail

CONFIG=${CONFIG:-/etc/modelyard/modelyard.yaml}

if [ "$#" -eq 0 ]; then
    set -- serve
fi

case "$1" in
    serve | agent)
        what=$1
        shift
        if [ "$what" = agent ] && [ -z "${NODE:-}" ]; then
            echo "entrypoint: set NODE to the node of $CONFIG this agent runs (modelyard agent --node NODE)" >&2
            exit 2
        fi
        status=0
        modelyard check "$CONFIG" || status=$?
        if [ "$status" -ne 0 ]; then
            echo "entrypoint: modelyard check $CONFIG failed (exit $status): nothing was started" >&2
            exit "$status"
        fi
        if [ "$what" = serve ]; then
            exec modelyard serve -c "$CONFIG" "$@"
        fi
        exec modelyard agent -c "$CONFIG" --node "$NODE" "$@"
        ;;
    *)
        exec "$@"
        ;;
esac
