#!/bin/sh
# Run, as an ordinary user, the tests that otherwise need root (pytest marker `unprivileged`):
# a tmpfs to fill or to make read-only under a running server, and clients on another "host"
# (network namespaces).  They run inside user namespaces of their own:
#   unshare --map-root-user   we are "root" of a user namespace, with no privilege outside it
#           --mount           tmpfs mounts that only these tests see
#           --net             a network of our own, where `ip netns` and veth pairs are allowed
# The PostgreSQL variants are left out: inside the namespace we look like root, and PostgreSQL
# clusters started as root hand themselves to another user, which the namespace does not have.
#
#     scripts/test_unprivileged.sh [pytest options]
set -eu
cd "$(dirname "$0")/.."
if ! unshare --map-root-user --mount --net true 2>/dev/null; then
    echo "user namespaces are not available to $(id -un) here (kernel.unprivileged_userns_clone," \
         "user.max_user_namespaces or an AppArmor rule forbids them): run these tests as root" >&2
    exit 1
fi
python3 scripts/dev.py test --version >/dev/null   # makes .venv on first use
base=$(mktemp -d "${TMPDIR:-/tmp}/balsamdb-unprivileged.XXXXXX")
trap 'rm -rf "$base"' EXIT
unshare --map-root-user --mount --net sh -c '
    base=$1; shift
    ip link set lo up                        # a new network has only a loopback, and it is down
    mount -t tmpfs -o mode=755 tmpfs /run    # `ip netns` keeps its namespaces in /run/netns
    exec .venv/bin/python -m pytest -p no:cacheprovider --basetemp="$base/pytest" \
        -m unprivileged -k "not postgres" "$@"
' unprivileged-tests "$base" "$@"
