#!/bin/sh
# The image's entrypoint: run the command given (default: ldpo --help) under tini, which
# forwards signals (docker stop, SLURM's preemption) and reaps the stages' child processes.
# Run as the calling user (docker run --user "$(id -u):$(id -g)"), whose uid has no home in the
# image: HOME then points at a private folder in /tmp (matplotlib's and torch's caches).
if [ ! -w "${HOME:-/}" ] || [ "${HOME:-/}" = / ]; then
    HOME=$(mktemp -d /tmp/ldpo-home.XXXXXX) && export HOME
fi
[ $# -gt 0 ] || set -- ldpo --help
if command -v tini >/dev/null 2>&1; then
    export TINI_SUBREAPER=1   # also when not PID 1 (apptainer, buildah run)
    exec tini -- "$@"
fi
exec "$@"
