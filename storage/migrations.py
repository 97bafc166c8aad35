"""Schema migrations keyed on `PRAGMA user_version`.

Each migration is a function registered in order; version N is "the first N applied".
A migration and its version bump commit in one transaction, so a crash leaves the file at
one version or the next, never between.

Log tables (event_log, action_log, tool_call_log) hold soft references: `caused_by`,
`triggered_by` and `action_id` are indexed but not foreign keys, because a log row must
never be refused (a parent still in the writer's buffer, or already pruned) and the chain
walk already shows a missing link as such.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

Migration = Callable[[sqlite3.Connection], None]
MIGRATIONS: list[Migration] = []


def execute_script(conn: sqlite3.Connection, script: str) -> None:
    """Run statements one by one inside the caller's transaction.

    `executescript` would COMMIT first, breaking a migration's atomicity.
    """
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            conn.execute(statement)
            statement = ""
    if statement.strip():
        raise ValueError(f"incomplete SQL statement: {statement.strip()[:80]}")


def migration(fn: Migration) -> Migration:
    """Register `fn` as the next schema version."""
    if fn in MIGRATIONS:
        raise ValueError(f"migration {fn.__name__} registered twice")
    MIGRATIONS.append(fn)
    return fn


@migration
def m001_chats_messages_tasks(conn: sqlite3.Connection) -> None:
    execute_script(
        conn,
        """
        CREATE TABLE chats (
            id          TEXT PRIMARY KEY,            -- namespaced: local:console, tg:123
            channel     TEXT NOT NULL,
            title       TEXT NOT NULL DEFAULT '',
            is_admin    INTEGER NOT NULL DEFAULT 0,
            first_seen  TEXT NOT NULL,
            last_seen   TEXT NOT NULL,
            cursor_seq  INTEGER NOT NULL DEFAULT 0   -- last messages.seq the agent processed
        );
        CREATE TABLE messages (
            seq          INTEGER PRIMARY KEY AUTOINCREMENT,   -- the processing cursor
            chat_id      TEXT NOT NULL REFERENCES chats(id) ON DELETE CASCADE,
            platform_id  TEXT,
            sender       TEXT NOT NULL DEFAULT '',
            text         TEXT NOT NULL,
            ts           TEXT NOT NULL,
            from_me      INTEGER NOT NULL DEFAULT 0,
            action_id    INTEGER                -- the message_stored action (the chain)
        );
        CREATE UNIQUE INDEX messages_platform ON messages(chat_id, platform_id)
            WHERE platform_id IS NOT NULL;
        CREATE INDEX messages_chat_seq ON messages(chat_id, seq);
        CREATE TABLE tasks (
            id            TEXT PRIMARY KEY,
            chat_id       TEXT NOT NULL,
            kind          TEXT NOT NULL CHECK (kind IN ('cron', 'every', 'once')),
            schedule      TEXT NOT NULL,        -- cron expression, seconds, or ISO time
            what          TEXT NOT NULL,        -- a built-in command or a prompt
            status        TEXT NOT NULL DEFAULT 'active'
                              CHECK (status IN ('active', 'paused', 'done')),
            created_at    TEXT NOT NULL,
            next_run_at   TEXT,
            last_run_at   TEXT,
            last_outcome  TEXT,
            last_error    TEXT
        );
        CREATE INDEX tasks_due ON tasks(status, next_run_at);
        CREATE TABLE task_runs (
            id             INTEGER PRIMARY KEY,
            task_id        TEXT NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
            scheduled_for  TEXT NOT NULL,
            trigger        TEXT NOT NULL CHECK (trigger IN ('schedule', 'manual', 'catch-up')),
            state          TEXT NOT NULL CHECK (state IN
                               ('running', 'succeeded', 'failed', 'missed', 'interrupted')),
            started_at     TEXT NOT NULL,
            finished_at    TEXT,
            error          TEXT,
            event_id       INTEGER,
            UNIQUE (task_id, scheduled_for)    -- one firing, one row: the claim
        );
        CREATE INDEX task_runs_finished ON task_runs(finished_at);
        """,
    )


@migration
def m002_event_chain(conn: sqlite3.Connection) -> None:
    execute_script(
        conn,
        """
        CREATE TABLE event_log (
            id           INTEGER PRIMARY KEY,   -- time-ordered, see storage/ids.py
            ts           TEXT NOT NULL,
            source       TEXT NOT NULL,
            source_id    TEXT,
            caused_by    INTEGER,               -- action_log.id
            summary      TEXT NOT NULL DEFAULT '',
            raw_content  TEXT
        );
        CREATE INDEX event_log_caused_by ON event_log(caused_by) WHERE caused_by IS NOT NULL;
        CREATE TABLE action_log (
            id            INTEGER PRIMARY KEY,
            ts            TEXT NOT NULL,
            triggered_by  INTEGER,              -- event_log.id
            action_type   TEXT NOT NULL,
            target        TEXT,
            content       TEXT,
            ok            INTEGER NOT NULL DEFAULT 1,
            error         TEXT
        );
        CREATE INDEX action_log_triggered_by ON action_log(triggered_by)
            WHERE triggered_by IS NOT NULL;
        CREATE INDEX action_log_failed ON action_log(id) WHERE ok = 0;
        CREATE TABLE tool_call_log (
            id           INTEGER PRIMARY KEY,
            ts           TEXT NOT NULL,
            action_id    INTEGER,               -- action_log.id
            tool_name    TEXT NOT NULL,
            input        TEXT,
            output       TEXT,
            duration_ms  REAL NOT NULL,
            ok           INTEGER NOT NULL DEFAULT 1,
            error        TEXT
        );
        CREATE INDEX tool_call_log_action ON tool_call_log(action_id);
        CREATE INDEX tool_call_log_failed ON tool_call_log(id) WHERE ok = 0;
        """,
    )


@migration
def m003_log_stats(conn: sqlite3.Connection) -> None:
    # Counts per UTC hour, kept by the writer and the pruner, so /debug report never
    # aggregates a million rows.
    execute_script(
        conn,
        """
        CREATE TABLE log_stats (
            hour    TEXT NOT NULL,              -- 'YYYY-MM-DDTHH' UTC
            kind    TEXT NOT NULL CHECK (kind IN ('event', 'action', 'tool')),
            key     TEXT NOT NULL,              -- source, action_type or tool_name
            n       INTEGER NOT NULL DEFAULT 0,
            failed  INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (hour, kind, key)
        ) WITHOUT ROWID;
        INSERT INTO log_stats (hour, kind, key, n, failed)
            SELECT substr(ts, 1, 13), 'event', source, count(*), 0
            FROM event_log GROUP BY 1, 3;
        INSERT INTO log_stats (hour, kind, key, n, failed)
            SELECT substr(ts, 1, 13), 'action', action_type, count(*), sum(ok = 0)
            FROM action_log GROUP BY 1, 3;
        INSERT INTO log_stats (hour, kind, key, n, failed)
            SELECT substr(ts, 1, 13), 'tool', tool_name, count(*), sum(ok = 0)
            FROM tool_call_log GROUP BY 1, 3;
        """,
    )


@migration
def m004_runs(conn: sqlite3.Connection) -> None:
    execute_script(
        conn,
        """
        CREATE TABLE runs (
            id              TEXT PRIMARY KEY,
            kind            TEXT NOT NULL CHECK (kind IN ('train', 'bench')),
            recipe          TEXT NOT NULL,
            params          TEXT NOT NULL,          -- JSON, resolved (defaults filled in)
            image           TEXT NOT NULL,
            gpus_wanted     INTEGER NOT NULL DEFAULT 0,
            gpus            TEXT NOT NULL DEFAULT '[]',   -- JSON list of assigned indices
            nproc           INTEGER NOT NULL DEFAULT 1,
            memory_mb       INTEGER,
            cpus            REAL,
            chat_id         TEXT NOT NULL,
            state           TEXT NOT NULL CHECK (state IN ('queued', 'starting', 'running',
                                'pausing', 'paused', 'stopping', 'succeeded', 'failed',
                                'cancelled', 'lost')),
            runner          TEXT,                   -- docker | process
            handle          TEXT,                   -- container id or pid
            created_at      TEXT NOT NULL,
            started_at      TEXT,
            ended_at        TEXT,
            step            INTEGER NOT NULL DEFAULT 0,
            total           INTEGER,
            metrics         TEXT NOT NULL DEFAULT '{}',   -- latest value per metric
            best            TEXT NOT NULL DEFAULT '{}',
            checkpoint      TEXT,                   -- latest checkpoint, relative to the run dir
            exit_code       INTEGER,
            error           TEXT,
            events_offset   INTEGER NOT NULL DEFAULT 0,   -- bytes of events.jsonl consumed
            last_beat_at    TEXT,
            stalled         INTEGER NOT NULL DEFAULT 0,
            retry_of        TEXT,
            launch_action   INTEGER                 -- the action later run events hang off
        );
        CREATE INDEX runs_state ON runs(state, created_at);
        CREATE TABLE run_states (
            id       INTEGER PRIMARY KEY,
            run_id   TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            ts       TEXT NOT NULL,
            state    TEXT NOT NULL,
            note     TEXT
        );
        CREATE INDEX run_states_run ON run_states(run_id, id);
        CREATE INDEX event_log_run ON event_log(source_id) WHERE source = 'run';
        """,
    )


@migration
def m005_kv_and_usage(conn: sqlite3.Connection) -> None:
    execute_script(
        conn,
        """
        CREATE TABLE kv (                      -- small durable state: a Telegram offset, ...
            key    TEXT PRIMARY KEY,
            value  TEXT NOT NULL
        );
        CREATE TABLE model_usage (             -- one row per model call
            id            INTEGER PRIMARY KEY,
            ts            TEXT NOT NULL,
            day           TEXT NOT NULL,       -- UTC date, for budgets and /usage
            chat_id       TEXT,
            model         TEXT NOT NULL,
            input         INTEGER NOT NULL DEFAULT 0,
            output        INTEGER NOT NULL DEFAULT 0,
            cache_read    INTEGER NOT NULL DEFAULT 0,
            cache_write   INTEGER NOT NULL DEFAULT 0,
            cost_usd      REAL NOT NULL DEFAULT 0,
            action_id     INTEGER
        );
        CREATE INDEX model_usage_day ON model_usage(day, chat_id);
        """,
    )


@migration
def m006_chat_access(conn: sqlite3.Connection) -> None:
    # Grants made from an admin chat (/chat allow|admin), kept apart from the settings'
    # ASSISTANT_ADMIN_CHATS: removing a chat there must take its rights away.
    execute_script(
        conn,
        """
        ALTER TABLE chats ADD COLUMN allowed INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE chats ADD COLUMN reply_mode TEXT NOT NULL DEFAULT 'addressed'
            CHECK (reply_mode IN ('addressed', 'all'));
        UPDATE chats SET is_admin = 0 WHERE id NOT LIKE 'local:%';
        -- 0: kept as context only (a group message not addressed to the assistant)
        ALTER TABLE messages ADD COLUMN answer INTEGER NOT NULL DEFAULT 1;
        """,
    )


@migration
def m007_run_definition_and_server(conn: sqlite3.Connection) -> None:
    # definition: the declared recipe (recipes.toml) a run was started from, as JSON; a
    # paused run resumes with the definition it started with, whatever the file says now.
    # server: the serving container a benchmark run started, to stop and reconcile it.
    execute_script(
        conn,
        """
        ALTER TABLE runs ADD COLUMN definition TEXT;
        ALTER TABLE runs ADD COLUMN server TEXT;
        """,
    )


@migration
def m008_run_requests(conn: sqlite3.Connection) -> None:
    # wanted: a stop, pause or kill asked of a run and not yet delivered to it (the engine
    # did not answer), with when it was asked; signalled_at: when the stop or pause signal
    # reached it (the grace period before a kill counts from there); blocked: why a request
    # or a launch waits (the engine's silence), shown with the run.
    execute_script(
        conn,
        """
        ALTER TABLE runs ADD COLUMN wanted TEXT;
        ALTER TABLE runs ADD COLUMN wanted_at TEXT;
        ALTER TABLE runs ADD COLUMN signalled_at TEXT;
        ALTER TABLE runs ADD COLUMN blocked TEXT;
        """,
    )


@migration
def m009_buttons(conn: sqlite3.Connection) -> None:
    # A button drawn under a message: the command it runs, the chat it may be pressed in,
    # and, once pressed, by whom and when (a second press acts not). `grp` ties a choice's
    # buttons (yes / no): pressing one uses them all. Threads: the message a thread
    # ("run:<id>") was opened by, per chat, so a run's later messages go under it.
    execute_script(
        conn,
        """
        CREATE TABLE buttons (
            token       TEXT PRIMARY KEY,
            grp         TEXT NOT NULL,
            chat_id     TEXT NOT NULL,
            label       TEXT NOT NULL,
            command     TEXT NOT NULL,
            created_at  TEXT NOT NULL,
            pressed_at  TEXT,
            pressed_by  TEXT,
            pressed_token TEXT,
            thread      TEXT            -- the thread key of its message: the answer goes there
        );
        CREATE INDEX buttons_grp ON buttons(grp);
        CREATE INDEX buttons_created ON buttons(created_at);
        CREATE TABLE threads (
            chat_id     TEXT NOT NULL,
            key         TEXT NOT NULL,
            message_id  TEXT NOT NULL,
            created_at  TEXT NOT NULL,
            PRIMARY KEY (chat_id, key)
        );
        """,
    )


@migration
def m010_watches(conn: sqlite3.Connection) -> None:
    # A job the assistant did not launch and follows (/watch): a container, a pid, a Slurm
    # job. out_offset is how far its output was read (bytes of a file; a container's last
    # log line's time in ns), stored with what those lines said, as runs do.
    execute_script(
        conn,
        """
        CREATE TABLE watches (
            id           TEXT PRIMARY KEY,
            kind         TEXT NOT NULL CHECK (kind IN ('container', 'pid', 'slurm')),
            target       TEXT NOT NULL,
            ref          TEXT NOT NULL,
            label        TEXT NOT NULL DEFAULT '',
            chat_id      TEXT NOT NULL,
            pattern      TEXT,
            rules        TEXT NOT NULL DEFAULT '{}',
            log_path     TEXT,
            state        TEXT NOT NULL,
            status       TEXT,
            exit_code    INTEGER,
            created_at   TEXT NOT NULL,
            started_at   TEXT,
            ended_at     TEXT,
            out_offset   INTEGER NOT NULL DEFAULT 0,
            step         INTEGER,
            total        INTEGER,
            metrics      TEXT NOT NULL DEFAULT '{}',
            best         TEXT NOT NULL DEFAULT '{}',
            lines        INTEGER NOT NULL DEFAULT 0,
            skipped      INTEGER NOT NULL DEFAULT 0,
            added_action INTEGER
        );
        CREATE INDEX watches_state ON watches(state);
        """,
    )


@migration
def m011_run_host(conn: sqlite3.Connection) -> None:
    # host: the pool host a run was placed on (runs/pool.py; '' on a single engine), so
    # its later calls, a restart and a resume go there; host_asked: what `host=` named (a
    # host or a label), kept for /run retry.
    execute_script(
        conn,
        """
        ALTER TABLE runs ADD COLUMN host TEXT NOT NULL DEFAULT '';
        ALTER TABLE runs ADD COLUMN host_asked TEXT NOT NULL DEFAULT '';
        """,
    )


@migration
def m012_slurm(conn: sqlite3.Connection) -> None:
    # 'preempted': a Slurm run the cluster requeued (it resumes by itself). The state's
    # CHECK is widened in place, as SQLite documents for loosening a constraint (its
    # ALTER TABLE cannot): rebuilding `runs` would cascade-delete run_history.
    (version,) = conn.execute("PRAGMA schema_version").fetchone()
    (sql,) = conn.execute(
        "SELECT sql FROM sqlite_master WHERE type='table' AND name='runs'"
    ).fetchone()
    old = "'cancelled', 'lost')"
    if old not in sql:
        raise RuntimeError("runs.state's CHECK is not the one m004_runs made")
    conn.execute("PRAGMA writable_schema = ON")
    try:
        conn.execute(
            "UPDATE sqlite_master SET sql = ? WHERE type='table' AND name='runs'",
            (sql.replace(old, "'cancelled', 'lost', 'preempted')"),),
        )
        conn.execute(f"PRAGMA schema_version = {int(version) + 1}")
    finally:
        conn.execute("PRAGMA writable_schema = OFF")
    (check,) = conn.execute("PRAGMA integrity_check").fetchone()
    if check != "ok":
        raise RuntimeError(f"m012_slurm: integrity check says {check}")


@migration
def m013_run_rev(conn: sqlite3.Connection) -> None:
    # rev: raised to the table's highest + 1 by every insert and update of a run, whoever
    # makes it (triggers, not callers), so the run monitor keeps its live runs in memory
    # and reads again only the rows whose rev passed the highest it has seen.
    execute_script(
        conn,
        """
        ALTER TABLE runs ADD COLUMN rev INTEGER NOT NULL DEFAULT 0;
        CREATE INDEX runs_rev ON runs(rev);
        CREATE TRIGGER runs_rev_insert AFTER INSERT ON runs BEGIN
            UPDATE runs SET rev = (SELECT max(rev) FROM runs) + 1 WHERE id = NEW.id;
        END;
        CREATE TRIGGER runs_rev_update AFTER UPDATE ON runs WHEN NEW.rev = OLD.rev BEGIN
            UPDATE runs SET rev = (SELECT max(rev) FROM runs) + 1 WHERE id = NEW.id;
        END;
        """,
    )


def apply_migrations(
    conn: sqlite3.Connection, migrations: list[Migration], target: int | None = None
) -> int:
    """Apply pending migrations up to `target`; idempotent. Runs on the db thread.

    :raises RuntimeError: if the file is newer than this code (a downgrade).
    """
    target = len(migrations) if target is None else target
    current = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if current > len(migrations):
        raise RuntimeError(
            f"database schema version {current} is newer than this code ({len(migrations)})"
        )
    for version in range(current + 1, target + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            migrations[version - 1](conn)
            conn.execute(f"PRAGMA user_version = {version}")
        except BaseException:
            conn.rollback()
            raise
        conn.commit()
    return max(current, target)
