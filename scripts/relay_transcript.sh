#!/usr/bin/env bash
# A transcript of smt against `db relay` while the record store goes down and comes back
# (docs/transfer.md, "The relay").  Real commands, real output: bash scripts/relay_transcript.sh
# Needs db and smt on PATH (pip install -e '.[test]'), git, and the free ports 8700 and 8701.
set -u
demo=${1:-/tmp/relay-demo}
rm -rf "$demo" && mkdir -p "$demo" && cd "$demo" || exit 1
store_pid=
cleanup() {
    db relay --stop --dir relay >/dev/null 2>&1
    [ -n "$store_pid" ] && kill "$store_pid" 2>/dev/null && wait "$store_pid" 2>/dev/null
    db dbserver --stop --path db >/dev/null 2>&1
}
trap cleanup EXIT
run() { echo "\$ $*"; "$@" 2>&1; }
store_up() {
    echo "\$ db serve --path db --port 8700 &     # the record store"
    db serve --path db --port 8700 >>serve.out 2>&1 &
    store_pid=$!
    for _ in $(seq 100); do curl -s -o /dev/null http://127.0.0.1:8700/ && return; sleep 0.1; done
    echo "the store did not start"; exit 1
}
export GIT_AUTHOR_NAME=Ada GIT_AUTHOR_EMAIL=ada@lab.example GIT_COMMITTER_NAME=Ada GIT_COMMITTER_EMAIL=ada@lab.example
{ db init db && echo "ada-s3cret" | db user add ada --path db --password-stdin && db user grant ada Demo --path db \
  && db dbserver --path db; } >setup.out 2>&1 || { cat setup.out; exit 1; }
mkdir work && (cd work && git init -q && printf 'import sys\nprint("n is", open(sys.argv[1]).read().strip())\n' > main.py \
  && echo "n = 1" > default.param && git add . && git commit -qm model)
echo "# the store, and a relay next to the jobs"
store_up
run db relay --to http://ada:ada-s3cret@127.0.0.1:8700/ --dir relay --port 8701
token=$(cut -d: -f2 relay/token)
cd work
echo "\$ smt init --store=http://relay:\$TOKEN@127.0.0.1:8701/ Demo"
smt init --store="http://relay:$token@127.0.0.1:8701/" Demo 2>&1 | sed "s/$token/\$TOKEN/g"
run smt configure --main=main.py --executable="$(command -v python3)"
run smt run --label=online default.param
echo
echo "# the store goes down"
echo "\$ kill \$STORE_PID"
kill "$store_pid" && wait "$store_pid" 2>/dev/null; store_pid=
run smt run --label=offline-1 --reason=offline default.param
run smt run --label=offline-2 default.param n=2
run smt tag while-down offline-1
run smt list
cd ..
run db relay --status --dir relay
echo
echo "# the store comes back"
run date -u +%H:%M:%S
store_up
for _ in $(seq 300); do db relay --status --dir relay --json | grep -q '"waiting": 0' && break; sleep 0.1; done
run db relay --status --dir relay
run db record ls Demo --path db
run db record history Demo offline-1 --path db
cd work && run smt list && cd ..
