#!/usr/bin/env bash
# py-spy on the running gateway under intake load: a flame graph and a top table (bench/profile.py).
# Usage: bench/profile.sh [--seconds 20] [--connections 16] [--workers 1] [--label NAME] [--out DIR] ...
# Needs the peer benchmark (PEER_BENCH, default ../shared/peer-bench) for wrk and its bodies.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec "${PYTHON:-.venv/bin/python}" bench/profile.py "$@"
