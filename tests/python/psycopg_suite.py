"""psycopg 3 as applications use it: pipelines (with an error inside), executemany,
statements prepared again with other parameter types, transactions, RETURNING, the pid
BackendKeyData gave. Prints one line per block; run against a node and through pgmulti,
the outputs must be equal. Usage: psycopg_suite.py HOST PORT DBNAME"""
import sys
import psycopg

host, port, db = sys.argv[1], int(sys.argv[2]), sys.argv[3]
dsn = f"host={host} port={port} user=postgres dbname={db}"
c = psycopg.connect(dsn, autocommit=True)
c.execute("drop table if exists pp"); c.execute("create table pp (id int primary key, v text)")
def block(name, f):
    try: print(name, f())
    except Exception as e: print(name, "error", type(e).__name__, str(e).splitlines()[0])
def b1():
    with c.pipeline() as p:
        for i in range(50):
            c.execute("insert into pp values (%s, %s)", (i, str(i)))
        cur=c.execute("select count(*) from pp")
        p.sync()
        return cur.fetchone()
block("b1", b1)
def b2():
    with c.pipeline():
        c.execute("insert into pp values (%s, %s)", (1000, 'x'))
        c.execute("insert into pp values (%s, %s)", (1000, 'dup'))
        c.execute("insert into pp values (%s, %s)", (1001, 'y'))
block("b2", b2)
block("after b2", lambda: c.execute("select count(*) from pp where id >= 1000").fetchone())
def b3():
    cur=c.cursor()
    cur.executemany("insert into pp values (%s, %s)", [(3000+i, str(i)) for i in range(20)])
    cur.executemany("update pp set v = %s where id = %s", [('a', 3000), ('b', 3001)])
    return cur.rowcount
block("b3", b3)
def b4():
    out=[]
    for i in range(7):
        out.append(c.execute("select %s::text, %s", (i, 1.5 if i%2 else i), prepare=True).fetchone())
    return out
block("b4", b4)
def b5():
    with c.transaction():
        with c.pipeline():
            for i in range(10): c.execute("update pp set v = v || %s where id = %s", ('z', i))
    return "ok"
block("b5", b5)
def b6():
    with c.pipeline() as p:
        cur = c.execute("select 1")
        p.sync()
        cur2 = c.execute("select 1/0")
        cur3 = c.execute("select 3")
    return "no error?"
block("b6", b6)
block("b7", lambda: c.execute("select 42").fetchone())
def b8():
    cur=c.cursor()
    cur.executemany("insert into pp values (%s, %s) returning id", [(5000+i, str(i)) for i in range(5)], returning=True)
    ids=[]
    while True:
        ids.append(cur.fetchone()[0])
        if not cur.nextset(): break
    return ids
block("b8", b8)
def b9():
    # Another session ends this one by the pid this one was given.
    other = psycopg.connect(dsn, autocommit=True)
    victim = psycopg.connect(dsn, autocommit=True)
    assert victim.execute("select 1").fetchone() == (1,)
    done = other.execute("select pg_terminate_backend(%s)", (victim.info.backend_pid,)).fetchone()
    try:
        victim.execute("select 1")
        return done, "victim still alive"
    except psycopg.OperationalError as e:
        return done, type(e).__name__
block("b9", b9)
print(c.execute("select count(*), md5(string_agg(v, ',' order by id)) from pp").fetchone())
