-- modelyard.db as a release from before schema versions wrote it (store.py at 5f4c4f1^:
-- no request_log.audio_s or .chars, user_version 0), with a row in every table but engines.
BEGIN TRANSACTION;
CREATE TABLE decisions (
    id TEXT PRIMARY KEY,
    at REAL NOT NULL,
    asked TEXT NOT NULL,
    rule TEXT,
    model TEXT,
    node TEXT,
    status INTEGER,
    degraded TEXT,
    body TEXT NOT NULL
);
INSERT INTO "decisions" VALUES('d-1',1764115201.0,'auto','code','qwen','local',200,NULL,'{"asked": "auto", "trail": []}');
CREATE TABLE engines (
    pid INTEGER NOT NULL,
    started INTEGER NOT NULL,
    pgid INTEGER NOT NULL,
    boot TEXT NOT NULL,
    model TEXT NOT NULL,
    argv0 TEXT NOT NULL,
    tag TEXT NOT NULL,
    owner_pid INTEGER NOT NULL,
    owner_started INTEGER NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (pid, started)
);
CREATE TABLE events (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    model TEXT NOT NULL,
    event TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    seconds REAL
);
INSERT INTO "events" VALUES(1,1764115200.5,'qwen','ready','pid 4242',3.25);
INSERT INTO "events" VALUES(2,1764115260.0,'qwen','stopped','idle for 300s (ttl)',NULL);
CREATE TABLE node_modes (
    node TEXT PRIMARY KEY,
    mode TEXT NOT NULL,
    at REAL NOT NULL
);
INSERT INTO "node_modes" VALUES('gamer','gaming',1764115100.0);
CREATE TABLE request_log (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    key TEXT,
    endpoint TEXT NOT NULL,
    asked TEXT NOT NULL,
    model TEXT,
    node TEXT,
    instance TEXT,
    decision TEXT,
    status INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    stream INTEGER NOT NULL,
    tokens_in INTEGER,
    tokens_out INTEGER,
    wait_s REAL,
    ttft_s REAL,
    duration_s REAL NOT NULL,
    error TEXT
);
INSERT INTO "request_log" VALUES(1,1764115201.0,'alice','chat','auto','qwen','local','qwen#1','d-1',200,'ok',1,12,40,0.01,0.2,1.5,NULL);
CREATE INDEX events_model ON events(model, event, at);
CREATE INDEX request_log_at ON request_log(at);
COMMIT;
