#!/usr/bin/env python3
"""Write a small starting corpus for every target into corpus/<target>/ (gitignored).

Run once before fuzzing: `python3 seeds.py`. Existing files are kept; seeds are named
seed-<n> so they are easy to tell from what libFuzzer adds.
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def i16(v):
    return struct.pack(">h", v)


def i32(v):
    return struct.pack(">i", v)


def u32(v):
    return struct.pack(">I", v)


def cstr(s):
    if isinstance(s, str):
        s = s.encode()
    return s + b"\0"


def msg(tag, body):
    return bytes([tag]) + u32(len(body) + 4) + body


def parse_body(name, sql, types=()):
    return cstr(name) + cstr(sql) + i16(len(types)) + b"".join(u32(t) for t in types)


def bind_body(portal, stmt, formats, params, results):
    b = cstr(portal) + cstr(stmt) + i16(len(formats)) + b"".join(i16(f) for f in formats)
    b += i16(len(params))
    for p in params:
        b += i32(-1) if p is None else i32(len(p)) + p
    return b + i16(len(results)) + b"".join(i16(f) for f in results)


def startup(params, version=196608):
    body = u32(version) + b"".join(cstr(k) + cstr(v) for k, v in params) + b"\0"
    return u32(len(body) + 4) + body


def error_body(fields):
    return b"".join(bytes([k]) + cstr(v) for k, v in fields) + b"\0"


def data_row(values):
    b = i16(len(values))
    for v in values:
        b += i32(-1) if v is None else i32(len(v)) + v.encode()
    return b


def row_description(names):
    b = i16(len(names))
    for n in names:
        b += cstr(n) + u32(0) + i16(0) + u32(25) + i16(-1) + i32(-1) + i16(0)
    return b


SQL = [
    "SELECT 1",
    "select a, b from t where id = $1",
    "INSERT INTO h (a, at) VALUES ($1, now()), (2, CURRENT_TIMESTAMP(3))",
    "insert into t values (random(), gen_random_uuid()) returning *",
    "UPDATE jobs SET status = 'running', worker = 3 WHERE id = (SELECT min(id) FROM jobs WHERE status = 'new' FOR UPDATE SKIP LOCKED) RETURNING id",
    "UPDATE accounts SET bal = bal - 7 WHERE id = 3 AND bal >= 7",
    "UPDATE total SET n = (SELECT count(*) FROM ev) -- comment",
    "DELETE FROM sess WHERE t < now() - interval '5 min'",
    "WITH n AS MATERIALIZED (SELECT id FROM jobs LIMIT 1) UPDATE jobs j SET s = 'x' FROM n WHERE j.id = n.id",
    "INSERT INTO jobs SELECT max(id) + 1 FROM jobs",
    "BEGIN; UPDATE t SET a = 1; COMMIT;",
    "create table x (a timestamptz default now()); insert into x values (now())",
    "alter table t add column at timestamptz default now()",
    "prepare p as insert into t values (now())",
    "SELECT pg_terminate_backend(12345)",
    "select nextval('s'); insert into \"Public\".\"Hist\" values (1)",
    "CREATE FUNCTION f() RETURNS int BEGIN ATOMIC SELECT 1; SELECT CASE WHEN true THEN 1 END; END",
    "SELECT $$ now() $$, E'\\'', U&\"d\\0061t\", 'now'::timestamp /* c */",
    "EXPLAIN ANALYZE UPDATE t SET a = 1 WHERE CURRENT OF c",
    "copy t from stdin",
]

SCRAM_CLIENT_FIRST = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
SCRAM_CLIENT_FINAL = (b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                      b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
SCRAM_SERVER_FIRST = (b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                      b"s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
SCRAM_SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def rec(op, body):
    body = body[:255]
    return bytes([op, len(body)]) + body


def seeds():
    s = {}
    frontend = [
        cstr("SELECT 1"),
        parse_body("s1", "SELECT $1, $2", [23, 0]),
        bind_body("", "s1", [1], [b"\0\0\0\x05", None], [0, 1]),
        cstr("p1") + i32(100),
        b"Scur\0",
        b"md5abc\0",
        cstr("SCRAM-SHA-256") + i32(len(SCRAM_CLIENT_FIRST)) + SCRAM_CLIENT_FIRST,
    ]
    s["frontend"] = frontend
    backend = [
        error_body([(ord("S"), "ERROR"), (ord("V"), "ERROR"), (ord("C"), "22P02"), (ord("M"), "bad"), (ord("D"), "d"), (ord("H"), "h")]),
        data_row(["1", None, "abc"]),
        row_description(["id", "name"]),
        u32(10) + b"SCRAM-SHA-256\0SCRAM-SHA-256-PLUS\0\0",
        u32(5) + b"salt",
        u32(11) + SCRAM_SERVER_FIRST,
        b"INSERT 0 5",
        b"UPDATE 3",
        u32(1234) + u32(5678),
        b"I",
    ]
    s["backend"] = backend
    s["framing"] = [b"\0" + msg(ord("Q"), cstr("SELECT 1")) + msg(ord("S"), b""),
                    b"\x01" + msg(ord("d"), b"x" * 40)]
    desc = []
    for tag, body in [(b"Q", cstr("SELECT 'x\n'")), (b"P", parse_body("s", "SELECT $1", [23])),
                      (b"B", bind_body("p", "s", [0, 1], [b"abc", None], [1])), (b"E", cstr("p") + i32(0)),
                      (b"D", b"Sname\0"), (b"F", u32(1) + i16(0) + i16(1) + i32(2) + b"ab" + i16(0)),
                      (b"p", b"secret-password\0")]:
        desc.append(b"\0" + tag + body)
    for tag, body in [(b"R", u32(10) + b"SCRAM-SHA-256\0\0"), (b"K", u32(1) + u32(2)), (b"C", b"SELECT 1\0"),
                      (b"D", data_row(["1", None])), (b"E", error_body([(ord("S"), "ERROR"), (ord("M"), "m\n")])),
                      (b"T", row_description(["a"])), (b"Z", b"I"), (b"S", b"a\0b\0"),
                      (b"v", i32(0) + i32(1) + b"_pq_.x\0"), (b"A", u32(1) + b"ch\0payload\0"),
                      (b"t", i16(1) + u32(23)), (b"G", b"\0" + i16(1) + i16(0)), (b"V", i32(3) + b"abc")]:
        desc.append(b"\x01" + tag + body)
    s["describe"] = desc
    s["startup"] = [
        startup([("user", "alice"), ("database", "shop"), ("options", "")]),
        startup([("user", "u")], version=196610),
        u32(8) + u32(80877103),
        u32(8) + u32(80877104),
        u32(16) + u32(80877102) + u32(4242) + u32(0xDEADBEEF),
    ]
    scram = [
        b"\0" + SCRAM_CLIENT_FIRST + b"\0" + SCRAM_CLIENT_FINAL,
        b"\0n,,n=,r=abc\0c=biws,r=abc%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=" + b"A" * 43 + b"=",
        b"\x01y,,n=,r=abc,x=1\0c=eSws,r=abc,p=AAAA",
        b"\x02\x00\x10,x=ext",
        b"\x03\x01\x05zz",
    ]
    s["scram_server"] = scram
    s["scram_client"] = [
        b"\0" + SCRAM_SERVER_FIRST + b"\0" + SCRAM_SERVER_FINAL,
        b"\x01r=rOprNGfwEbeRWgbNEkqOxyz,s=c2FsdA==,i=100001\0e=invalid-proof",
        b"\0r=rOprNGfwEbeRWgbNEkqOxyz,s=c2FsdA==,i=1,x=y\0v=AAAA",
        b"\x02\x00\x30,i=1",
        b"\x03\x01\x02v=",
    ]
    s["userlist"] = [
        b'"alice" "secret"\n"bob" "md5' + b"0123456789abcdef0123456789abcdef" + b'"\n; comment\n# c\n'
        b'"carol" "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=:6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="\n'
        b'"say ""hi""" "x" trailing\n',
    ]
    conf_path = os.path.join(HERE, "..", "conf", "pgmulti.conf")
    configs = [b"backend_hostname0 = 'localhost'\nport = 6432\nhealth_check_period = 2min\n",
               b"mode = replication\nbackend_hostname0 = '/tmp'\nbackend_hostname1 = h2\nbackend_port1 = 5433\n"
               b"backend_weight1 = 0.5\nauth_file = 'users.txt'\nclient_auth = md5\npreconnect = 'db:u, db2:v'\n"
               b"failover_command = 'echo ''%d'' # x'\nssl = on\nssl_cert_file = c\nssl_key_file = k\n"
               b"pool_mode = transaction\nconnect_timeout = 500ms\n"]
    if os.path.exists(conf_path):
        configs.append(open(conf_path, "rb").read())
    s["config"] = configs
    s["sql_classify"] = [q.encode() for q in SQL] + [
        b"t|table||\nt|column|id|integer\nt|key|id|\nt|default|at|now()\nt|trigger IU|stamp|BEGIN NEW.at := clock_timestamp(); END"]
    s["sql_request"] = [q.encode() for q in SQL]
    effects = []
    for i, q in enumerate(SQL):
        answers = rec(2, b"id,id,status,md5") + rec(0, b"4,4,run,0123456789abcdef") + rec(4, b"UPDATE 1")
        effects.append(bytes([i * 2]) + q.encode() + b"\0" + answers)
    s["effects"] = effects
    ext = []
    def P(name, sql, types=0):
        return rec(types << 5, bytes([NAMES.index(name)]) + sql.encode())
    def B(portal, stmt, vals=b"", formats=0, fbits=0):
        return rec(2, bytes([NAMES.index(stmt), NAMES.index(portal), formats, fbits]) + vals)
    def E(portal):
        return rec(5, bytes([NAMES.index(portal), 1]))
    SYNC = rec(8, b"")
    ext.append(b"\x08" + P("s1", "UPDATE jobs SET status = $1 WHERE id = (SELECT min(id) FROM jobs WHERE status = 'new')")
               + rec(6, b"\x00\x01") + SYNC + B("p1", "s1", b"running", 1, 1) + E("p1") + SYNC)
    ext.append(b"\x02" + P("s2", "INSERT INTO h (a, at) VALUES ($1, CURRENT_TIMESTAMP)") + SYNC
               + B("", "s2", b"7", 1, 1) + E("") + SYNC)
    ext.append(b"\x00" + P("", "SELECT abalance FROM a WHERE aid = $1") + B("", "", b"1") + E("") + SYNC
               + P("s1", "BEGIN") + SYNC + B("", "s1") + rec(6, b"\x01\x00") + E("") + SYNC)
    ext.append(b"\x09" + P("s1", "DELETE FROM jobs j WHERE status = 'done' RETURNING j.worker") + B("p1", "s1")
               + E("p1") + rec(9, b""))
    ext.append(b"\x00" + P("s1", "INSERT INTO t VALUES ($1, now())") + SYNC + rec(4, b"\xff\x7f\x01\x00\x01") + E("") + SYNC)
    s["extended"] = ext
    s["metrics_http"] = [
        b"GET /metrics HTTP/1.1\r\nHost: localhost:9187\r\nAccept: */*\r\n\r\n",
        b"\r\nHEAD /metrics?x=1 HTTP/1.0\n\n",
        b"POST / HTTP/1.1\r\n\r\n",
        b"commit pgmulti_ab12cd34_1\ncommit pgmulti_ab12cd34_2\ndone pgmulti_ab12cd34_1\n",
    ]
    return s


NAMES = ["", "s1", "s2", "p1"]


def main():
    for target, items in seeds().items():
        d = os.path.join(HERE, "corpus", target)
        os.makedirs(d, exist_ok=True)
        for n, data in enumerate(items):
            with open(os.path.join(d, f"seed-{n}"), "wb") as f:
                f.write(data)
        print(f"{target}: {len(items)} seeds")


if __name__ == "__main__":
    main()
