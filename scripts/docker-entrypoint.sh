#!/bin/sh
# Fetches the model into the cache volume if it is not there yet (pinned sha256 sums),
# then serves it. Extra arguments go to `tokenwise serve`.
set -eu
python3 /opt/tokenwise/fetch_models.py "$MODEL"
exec tokenwise serve --model "$MODEL" --host 0.0.0.0 --port "$PORT" --parallel "$PARALLEL" "$@"
