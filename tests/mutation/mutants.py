"""The guarantee mutants: each breaks one promise of docs/guarantees.md the way a refactor would.

Run by ``python3 scripts/mutants.py`` (see its docstring).  Each mutant:

- ``row``: a piece of the promise's text, matching exactly one row of docs/guarantees.md;
- ``file``, ``old``, ``new``: ``old`` must occur exactly once in ``file``; the mutant replaces it by
  ``new``.  Keep ``old`` small and distinctive, so that other changes to the file leave it applicable;
  when it no longer applies the run fails (exit 2) until the mutant is updated: never skip one;
- ``tests``: the quickest test node ids that must fail with the mutant applied;
- ``why``: the slip it stands for, in one line.

A parametrized test on both backends is named with ``[sqlite3]`` here: one backend is enough to kill
a mutant of code both share, and PostgreSQL costs a cluster start.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Mutant:
    name: str
    row: str
    file: str
    old: str
    new: str
    tests: tuple
    why: str
    timeout: float = 0.0  # seconds; 0: the runner's default
    slow: bool = False  # its tests take a minute or so: the runner starts it early


M = Mutant
MUTANTS = [
    # -- Nothing acknowledged is lost, nothing is applied twice ---------------------------------------
    M("sqlite-synchronous-normal", "the server's connection is as durable as the settings say", "balsamdb/dbdir.py",
      '"synchronous": settings.sqlite_synchronous,', '"synchronous": "NORMAL",',
      ("tests/test_guarantee_gaps.py::test_the_server_reports_the_durability_its_connection_has",),
      "a weaker durability setting on the server's connection (issue 25's survivor)"),
    M("retry-not-answered-from-record", "a retry of an applied write is answered from the record of applied",
      "balsamdb/applier.py", "if record and request.id in applied:", "if False and record and request.id in applied:",
      ("tests/test_server.py::test_retry_of_an_applied_write_is_answered_from_the_record[sqlite3]",),
      "a retry applied a second time instead of answered from the record"),
    M("update-state-not-recorded", "also where a second apply would not fail by itself: A's",
      "balsamdb/applier.py", "        if record:\n            text = request.text",
      "        if record and op.name != \"job_update_state\":\n            text = request.text",
      ("tests/test_exactly_once.py::test_zeromq_retry_after_another_clients_write_is_answered_from_the_record[sqlite3]",),
      "one operation's request id not recorded"),
    M("retry-in-batch-not-seen", "a write and its retry in one group commit",
      "balsamdb/applier.py", "            applied[request.id] = text\n", "",
      ("tests/test_applied_record.py::test_a_retry_in_the_same_group_commit_gets_the_original_answer[sqlite3]",),
      "a retry later in the same batch not seeing the first's answer"),
    M("batch-outside-a-transaction", "a crash inside a group commit, made to happen", "dbserver/writer/committer.py",
      '            return self.database.atomic(lock_type="IMMEDIATE")',
      '            return __import__("contextlib").nullcontext()',
      ("tests/test_crash_points.py::test_a_crash_inside_the_group_commit_applies_the_retry_once",),
      "a group commit whose statements each commit alone (SQLite autocommit)"),
    M("watchdog-no-backoff", "the watchdog backs off when the server keeps dying", "dbserver/supervisor/watchdog.py",
      "delay = 0.0 if self.failures <= 1 else delay_after(self.failures - 2, 0.25, MAX_BACKOFF)",
      "delay = 0.0",
      ("tests/test_guarantee_gaps.py::test_the_watchdog_backs_off_and_never_gives_up",),
      "restarts in a tight loop"),
    M("direct-write-no-busy-timeout", "32 processes writing SQLite directly at once", "balsamdb/dbdir.py",
      "timeout = settings.direct_deadline if busy_timeout is None else busy_timeout",
      "timeout = 0 if busy_timeout is None else busy_timeout",
      ("tests/test_direct_concurrency.py::test_32_processes_writing_at_once_lose_no_job",),
      "direct writers with no busy timeout: 'database is locked'", slow=True),

    # -- The watchdog never gives up; one server per DB directory ------------------------------------
    M("watchdog-gives-up", "the watchdog never gives up: 50 failed starts", "dbserver/supervisor/watchdog.py",
      "        self.restart_at = time.monotonic() + delay\n",
      "        self.restart_at = time.monotonic() + (delay if self.failures < 6 else 1e9)\n",
      ("tests/test_guarantee_gaps.py::test_the_watchdog_backs_off_and_never_gives_up",),
      "a watchdog that gives up after enough failed starts (issue 25's survivor)"),
    # (log/ removed: not mutated; the watchdog's check and the file handler each recreate it alone.)
    M("first-start-claims-a-stop", "the very first start failing (a configuration error)", "dbserver/supervisor/watchdog.py",
      '            reason = f"the first start failed: {failed}"', '            reason = "stopped by db dbserver --stop"',
      ("tests/test_watchdog.py::test_a_failing_first_start_still_fails_and_claims_no_stop",),
      "a failed first start recorded as a stop someone asked for"),
    M("server-lock-shared", "a write server holds `server.lock` for its whole life", "dbserver/supervisor/liveness.py",
      "            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)\n            break\n",
      "            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)\n            break\n",
      ("tests/test_guarantee_gaps.py::test_the_server_lock_refuses_a_second_process_while_held",),
      "the server's lock taken shared"),

    # -- When no server can be reached, writes wait in the spool -------------------------------------
    M("spool-newest-first", "one client's spooled writes are applied in the order of its calls",
      "balsamdb/spool.py", 'names = sorted(n for n in os.listdir(self.new) if n.endswith(".req") and n not in skip)',
      'names = sorted((n for n in os.listdir(self.new) if n.endswith(".req") and n not in skip), reverse=True)',
      ("tests/test_properties.py::test_spool_order_is_time_order_across_clients",),
      "the spool read newest first"),
    M("spool-order-by-client", "the spool's order, for any client ids",
      "balsamdb/spool.py", 'names = sorted(n for n in os.listdir(self.new) if n.endswith(".req") and n not in skip)',
      'names = sorted((n for n in os.listdir(self.new) if n.endswith(".req") and n not in skip), '
      'key=lambda n: n.split("-", 1)[1])',
      ("tests/test_properties.py::test_spool_order_is_time_order_across_clients",),
      "spool order across clients decided by client id, not time (issue 25's survivor)"),
    M("spool-clock-step-back", "the spool's order, for any client ids",
      "balsamdb/spool.py", "stamp = max(time.time_ns(), not_before + 1)", "stamp = time.time_ns()",
      ("tests/test_properties.py::test_one_clients_spool_order_survives_a_clock_that_steps_back",),
      "one client's files out of order when the clock steps back"),
    M("live-write-not-held", "a live write never overtakes a spooled one", "dbserver/writer/spool_order.py",
      "        waiting = self.barrier.waiting(self.spool.names())\n        if not waiting:",
      "        waiting = set()\n        if not waiting:",
      ("tests/test_spool_order.py::test_a_live_write_waits_for_every_spooled_write[sqlite3]",),
      "live requests not held behind the spool", slow=True),
    M("direct-overtakes-spool", "no server: a process that may write SQLite directly spools its write behind",
      "balsamdb/api.py", "            return self._spool_writer.spool.any_waiting()",
      "            return self._spool_writer.waiting()",
      ("tests/test_spool_order.py::test_a_direct_writer_spools_behind_another_process_s_spooled_writes",),
      "a direct write overtaking another process's spooled writes"),
    M("spool-off-still-spools", "`require_server` spools; `spool=False` raises", "balsamdb/api.py",
      "                if write and self.settings.spool:\n                    if self.db_type == \"sqlite3\"",
      "                if write:\n                    if self.db_type == \"sqlite3\"",
      ("tests/test_server.py::test_require_server_spools_and_spool_off_refuses",),
      "spool=False ignored when no server runs"),

    # -- Over HTTP ------------------------------------------------------------------------------------
    M("http-id-not-scoped-stable", "a retry of one request id is applied once; another user's",
      "dbserver/http/operation_api.py",
      "scoped_id = hashlib.sha256(f\"{user['name']}\\0{request_id}\".encode()).hexdigest()[:48]",
      "scoped_id = hashlib.sha256(f\"{user['name']}\\0{request_id}{time.time()}\".encode()).hexdigest()[:48]",
      ("tests/test_remote.py::test_a_retry_of_one_request_id_is_applied_once[sqlite3]",),
      "the store's per-user id not stable between tries"),
    M("http-spool-newest-first", "the local spool sends one client's writes in the order of its calls",
      "balsamdb/remote.py", "        for path in self.spool.pending():",
      "        for path in reversed(self.spool.pending()):",
      ("tests/test_spool_order_single.py::test_the_http_clients_spooled_chain_is_sent_in_order",),
      "the HTTP client's spool sent newest first"),
    M("grant-without-check", "every route that reads or changes a project (the Sumatra routes",
      "dbserver/http/sumatra_api.py",
      "        if method == \"POST\":\n            writable_project(project)\n",
      "        if method == \"POST\":\n",
      ("tests/test_permissions_table.py::test_sumatra_routes[POST {p}/permissions/-private-non-member]",),
      "no check on POST {p}/permissions/"),
    M("versions-view-without-check", "every read route variant, generated from the app's URL map",
      "dbserver/http/sumatra_api.py",
      "            readable_project(project)\n            if \"versions\" in request.args:\n"
      "                return versions_reply(project, label)\n",
      "            if \"versions\" in request.args:\n                return versions_reply(project, label)\n"
      "            readable_project(project)\n",
      ("tests/test_properties.py::test_every_read_route_variant_checks_the_permission",),
      "a query-parameter read route (?versions) answering without its permission check (issue 25's survivor)"),
    M("find-page-without-check", "every read route variant, generated from the app's URL map",
      "dbserver/http/record_pages.py", "    project = web.readable_project(name)\n    args = flask.request.args",
      "    project = web.store.project(name)\n    args = flask.request.args",
      ("tests/test_properties.py::test_every_read_route_variant_checks_the_permission",),
      "?search/sort/page answering without the permission check"),
    M("http-future-stamp-accepted", "a request stamped more than 300 s in the future is refused (400)",
      "dbserver/http/operation_api.py", "sent - time.time() > MAX_CLOCK_SKEW:",
      "sent - time.time() > 100 * MAX_CLOCK_SKEW:",
      ("tests/test_clock_skew.py::test_http_operation_endpoint_refuses_writes_stamped_in_the_future_or_too_old",),
      "a future stamp accepted"),

    # -- Moving stores loses nothing and says so ------------------------------------------------------
    # (the end line not checked: not mutated alone; a cut file also fails the count of its items.)
    M("damaged-export-accepted", "a truncated or foreign export file is refused before anything is written",
      "balsamdb/transfer/files.py", "    if counts != expected:\n        raise TransferError(",
      "    if False:\n        raise TransferError(",
      ("tests/test_transfer.py::test_an_export_missing_lines_in_the_middle_is_refused",),
      "the items of an export not counted against its end line"),

    # -- Sumatra's contract ---------------------------------------------------------------------------
    M("saved-at-in-the-future", "the store keeps a relay's `Balsamdb-Saved-At` (never in the future)",
      "balsamdb/operations/records.py",
      'saved = when if saved_at is None else min(check_number(saved_at, "saved_at", float, 0), when)',
      'saved = when if saved_at is None else check_number(saved_at, "saved_at", float, 0)',
      ("tests/test_relay_saved_at.py::test_the_store_keeps_the_time_and_author_a_relay_sends",),
      "a version dated in the future"),
    M("relay-forwards-newest-first", "the relay's spool read again at a start",
      "dbserver/relay/spool.py", "for path in sorted(self.new.iterdir()):",
      "for path in sorted(self.new.iterdir(), reverse=True):",
      ("tests/test_guarantee_gaps.py::test_the_relays_spool_reopened_keeps_each_records_saves_in_order",),
      "the relay forwarding saves newest first"),

    # -- Bad input and bad conditions -----------------------------------------------------------------
    M("clock-skew-no-abs", "a request stamped an hour ahead or an hour behind", "balsamdb/protocol.py",
      "if abs(now - sent) > MAX_AGE:", "if now - sent > MAX_AGE:",
      ("tests/test_clock_skew.py::test_zeromq_refuses_requests_stamped_an_hour_away_in_either_direction",),
      "abs dropped from the replay check"),
    M("request-nan-accepted", "the write server refuses NaN, Infinity and `1e999`", "balsamdb/jsonio.py",
      "_STRICT = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)",
      "_STRICT = json.JSONDecoder()",
      ("tests/test_hardening.py::test_strict_json_unit",),
      "the server parsing requests leniently"),
    M("client-nan-sent", "NaN and ±Infinity in a payload are refused by the client", "balsamdb/jsonio.py",
      "dumps_finite = json.JSONEncoder(separators=(\",\", \":\"), ensure_ascii=False, allow_nan=False).encode",
      "dumps_finite = json.JSONEncoder(separators=(\",\", \":\"), ensure_ascii=False).encode",
      ("tests/test_hardening.py::test_nan_in_a_payload_is_refused_by_the_client_before_it_is_sent_or_spooled",),
      "the client sending NaN"),
    M("stray-spool-entry-blocks", "a stray entry in `spool/new`", "balsamdb/spool.py",
      "        if not stat.S_ISREG(mode):", "        if False:",
      ("tests/test_hardening.py::test_stray_entries_in_spool_new_move_to_failed_with_the_reason",),
      "a directory in spool/new not recognised as stray", slow=True),
    M("unknown-param-accepted", "a request with parameters its operation does not take",
      "balsamdb/operations/registry.py", "if op.required <= keys and (op.any_names or keys <= op.names):",
      "if op.required <= keys:",
      ("tests/test_request_path.py::test_the_quick_parameter_check_agrees_with_the_signature",),
      "the quick check without the unknown-name test"),

    # -- Nobody else gets in --------------------------------------------------------------------------
    M("client-accepts-foreign-answer", "the client refuses an answer not signed with its DB directory's secret",
      "balsamdb/client.py", "answer = protocol.decode(self.secret, frames, strict=False)",
      "answer = protocol.loads_answer(frames[0][protocol.ENVELOPE_BYTES:])",
      ("tests/test_guarantee_gaps.py::test_the_client_refuses_an_answer_signed_with_another_key",),
      "the client accepting an answer signed with another key (issue 25's survivor)"),
    M("server-skips-signature", "another user on the machine can neither open the DB directory",
      "balsamdb/protocol.py", "    if not hmac.compare_digest(mac, sign(secret, body)):",
      "    if False:",
      ("tests/test_server.py::test_bad_messages_get_error_answers_and_the_server_keeps_serving[sqlite3]",),
      "the HMAC not checked"),
    M("short-secret-accepted", "an empty or short (< 32 bytes) secret is refused", "balsamdb/dbdir.py",
      "    if len(secret) < MIN_SECRET_BYTES:", "    if len(secret) < 1:",
      ("tests/test_hardening.py::test_an_empty_or_short_secret_is_refused_by_client_and_server",),
      "a short secret accepted"),
    M("secret-file-world-readable", "the secret is only in `P/secret` (mode 600)", "balsamdb/private_files.py",
      "    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)",
      "    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644); os.fchmod(fd, 0o644)",
      ("tests/test_security.py::test_secrets_live_only_in_private_files_and_never_in_logs[sqlite3]",),
      "a private file made readable by others"),
    M("unknown-user-no-hash", "login attempts over HTTP: an unknown user costs the same one scrypt",
      "dbserver/http/login_guard.py", "            verify_password(password, self.dummy_hash())",
      "            pass",
      ("tests/test_hardening.py::test_unknown_user_and_wrong_password_cost_one_hash_each",),
      "an unknown user answered faster than a wrong password"),
    M("login-not-throttled", "failed HTTP logins are throttled", "dbserver/http/login_guard.py",
      "        wait = self.throttled(address, name)\n", "        wait = 0\n",
      ("tests/test_hardening.py::test_failed_logins_are_throttled_and_a_legitimate_user_is_still_served",),
      "no throttling of guesses"),

    # -- Memory stays bounded -------------------------------------------------------------------------
    M("batch-bytes-unbounded", "one group commit takes at most `max_batch_bytes`", "dbserver/writer/server.py",
      "while len(batch) < MAX_BATCH and size < self.settings.max_batch_bytes:",
      "while len(batch) < MAX_BATCH:",
      ("tests/test_bounded_memory.py::test_a_batch_is_bounded_in_bytes",),
      "a group commit not bounded in bytes"),
    M("client-ignores-server-limit", "the server publishes `max_request_bytes` in the address file",
      "balsamdb/api.py", "    if isinstance(limit, int) and not isinstance(limit, bool) and size > limit:",
      "    if False:",
      ("tests/test_bounded_memory.py::test_the_client_refuses_a_write_larger_than_the_server_reads",),
      "the client ignoring the server's published limit", slow=True),

    # -- Direct SQLite only on a local file system ---------------------------------------------------
    M("unknown-fs-is-local", "statfs types ext2/3/4, xfs", "balsamdb/filesystems.py",
      '"local": magic in LOCAL}', '"local": magic not in REMOTE_NAMES}',
      ("tests/test_filesystems.py::test_an_unknown_file_system_counts_as_remote",),
      "an unknown file system taken for local"),
    M("reads-direct-on-network-fs", "no server, and a file system statfs calls NFS", "balsamdb/api.py",
      "                        and self._direct_allowed():",
      "                        and (not write or self._direct_allowed()):",
      ("tests/test_guarantee_gaps.py::test_no_direct_read_or_write_on_a_network_file_system",),
      "reads going direct on a network file system (issue 25's survivor)"),

    # -- The web pages --------------------------------------------------------------------------------
    M("jobs-pages-not-admin-only", "the jobs pages are for admins only", "dbserver/http/pages.py",
      "        if not user.get(\"admin\"):\n            raise self.error(403",
      "        if False:\n            raise self.error(403",
      ("tests/test_web_pages.py::test_jobs_pages_are_for_admins_only",),
      "the admin check dropped"),
    M("reader-not-read-only", "the pages read on read-only connections", "dbserver/http/reads.py",
      '?mode=ro", uri=True, timeout=5.0,\n                                 pragmas={"query_only": 1})',
      '", uri=True, timeout=5.0)',
      ("tests/test_web_pages.py::test_read_only_connection_refuses_writes[sqlite3]",),
      "SQLite opened for writing by the pages"),

    # -- The code keeps its shape ---------------------------------------------------------------------
    M("export-partial-left", "an export file is complete or absent", "balsamdb/transfer/files.py",
      "        if os.path.exists(tmp):\n            os.unlink(tmp)\n", "        pass\n",
      ("tests/test_fast_units.py::test_export_file_is_complete_or_absent",),
      "the partial file not removed"),
    M("record-rm-no-check", "`db record rm` (and `records.delete_labels`) checks every label",
      "balsamdb/facades.py", "        if missing:\n            raise NotFound(f\"no record",
      "        if False:\n            raise NotFound(f\"no record",
      ("tests/test_fast_units.py::test_record_rm_checks_every_label_before_removing_any",),
      "labels removed before all were checked"),
    M("delete-one-request", "`db.jobs.delete` (and so `db job rm`) sends at most 500 ids",
      "balsamdb/facades.py", "    DELETE_CHUNK = 500 ", "    DELETE_CHUNK = 10 ** 9 ",
      ("tests/test_fast_units.py::test_many_ids_are_deleted_in_requests_of_delete_chunk_ids",),
      "one request with every id"),
    M("prefix-ambiguous-taken", "the Python API takes job id prefixes as `db job` does", "balsamdb/facades.py",
      "            if len(matches) > 1:\n                shown", "            if False:\n                shown",
      ("tests/test_fast_units.py::test_the_python_api_takes_job_id_prefixes_as_db_job_does",),
      "an ambiguous prefix taken as its first match"),

    # -- the job state machine (docs/concepts.md; checked on every write) ----------------------------
    M("state-moves-to-itself", "the job state machine is the one docs/protocol.md states", "balsamdb/states.py",
      "TRANSITIONS = {state: frozenset(targets) for state, targets in TRANSITIONS.items()}",
      "TRANSITIONS = {state: frozenset(targets | {state}) for state, targets in TRANSITIONS.items()}",
      ("tests/test_properties.py::test_the_state_table_is_the_documented_rules",),
      "a state moving to itself (issue 25's survivor)"),
    M("finished-job-restartable", "the job state machine is the one docs/protocol.md states", "balsamdb/states.py",
      'for _state in ("RUN_ERROR", "RUN_TIMEOUT", "FAILED", "USER_KILLED"):',
      'for _state in ("RUN_ERROR", "RUN_TIMEOUT", "FAILED", "USER_KILLED", "JOB_FINISHED"):',
      ("tests/test_properties.py::test_the_state_table_is_the_documented_rules",),
      "JOB_FINISHED no longer final"),

    M("job-moves-backwards", "the job state machine is the one docs/protocol.md states", "balsamdb/states.py",
      "    TRANSITIONS[_state].update(_PRE_RUN[_i + 1:])", "    TRANSITIONS[_state].update(_PRE_RUN[_i - 1:])",
      ("tests/test_properties.py::test_the_state_table_is_the_documented_rules",),
      "a pre-run state allowed to go one step back"),

    # -- more rows --------------------------------------------------------------------------------------
    M("envelope-returns-a-list", "the envelope: any bytes (signed or not", "balsamdb/protocol.py",
      "    if not isinstance(message, dict):\n        raise BadRequest(\"the message body must be a JSON object\")",
      "    pass",
      ("tests/test_properties.py::test_the_envelope_refuses_or_reads_any_bytes",),
      "a signed JSON array or number taken for a message"),
    M("checker-ignores-order", "every fault and load test with writer processes checks their history", "tests/history.py",
      "if later.invoked > first.completed and positions[later.value] < positions[first.value]:",
      "if False:",
      ("tests/test_history_checker.py::test_a_bad_history_is_named",),
      "the history checker blind to reordered writes"),
    M("write-once-not-enforced", "write-once is a per-project option", "balsamdb/operations/records.py",
      "    if not row or not row[0]:\n        return\n",
      "    if True:\n        return\n",
      ("tests/test_api.py::test_a_save_replaces_and_write_once_is_a_project_option[sqlite3-direct]",),
      "a write-once project's provenance fields changed by a save"),
    M("dead-watchdog-status-ok", "`--status` exits 0 running and supervised, 3 with a dead watchdog", "dbserver/supervisor/control.py",
      '        return STATUS_UNHEALTHY, f"server up, unsupervised: watchdog pid',
      '        return STATUS_RUNNING, f"server up, unsupervised: watchdog pid',
      ("tests/test_watchdog.py::test_status_exit_codes_and_a_dead_watchdog",),
      "a dead watchdog reported as healthy"),

    M("stale-address-file-trusted", "a stale address file (dead processes) is recognised at once", "balsamdb/client.py",
      '    if info.get("state") in ("running", "restarting") and address_file.watchdog_alive(info):',
      '    if info.get("state") in ("running", "restarting"):',
      ("tests/test_server.py::test_stale_address_file_is_detected_fast[sqlite3]",),
      "a dead watchdog's address file taken for a server coming back: clients wait"),
    M("log-line-forged", "a `%0a` (or any control character) in a request cannot forge a line", "dbserver/logs.py",
      "    return text.translate(_ESCAPES)", "    return text",
      ("tests/test_hardening.py::test_control_characters_in_a_request_cannot_forge_a_log_line",),
      "request text logged unescaped"),
    M("error-status-flattened", "the HTTP store answers a library error with the status its class carries",
      "dbserver/http/app.py", "            status = exc.http_status\n", "            status = 500\n",
      ("tests/test_fast_units.py::test_operation_endpoint_answers_each_error_with_its_class_status",),
      "every library error answered 500"),
    M("jobs-filter-changed-ignored", "the jobs page reads its filters as `db ls` does", "balsamdb/job_queries.py",
      '    field = "updated" if changed else "created"', '    field = "created"',
      ("tests/test_web_pages.py::test_job_filters_read_what_db_ls_takes",),
      "the jobs page ignoring ?changed"),
    M("protocol-doc-stale", "docs/protocol.md's error and operation tables are those", "balsamdb/exceptions.py",
      '    code = "not_found"\n    http_status = 404\n', '    code = "not_found"\n    http_status = 410\n',
      ("tests/test_docs.py::test_protocol_tables_are_current",),
      "a status changed in the code, not in the page"),
]
