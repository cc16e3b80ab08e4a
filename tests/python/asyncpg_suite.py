"""asyncpg as applications use it: executemany (pipelined), an error inside one, prepared
statements, a transaction, COPY, several types, a notification and its sender pid. Prints
one line per block; run against a node and through pgmulti, the outputs must be equal.
Usage: asyncpg_suite.py HOST PORT DBNAME"""
import asyncio
import sys

import asyncpg


async def main(host, port, db):
    c = await asyncpg.connect(host=host, port=port, user='postgres', database=db)
    async def block(name, coro):
        try: print(name, await coro)
        except Exception as e: print(name, "error", type(e).__name__, str(e).splitlines()[0])
    await c.execute("drop table if exists ap; create table ap (id int primary key, v text, t timestamptz default now())")
    await block("many", c.executemany("insert into ap (id, v) values ($1, $2)", [(i, str(i)) for i in range(100)]))
    await block("fetch", c.fetch("select count(*) from ap"))
    await block("dup", c.executemany("insert into ap (id, v) values ($1, $2)", [(1000, 'a'), (1000, 'b')]))
    await block("after dup", c.fetchval("select count(*) from ap where id >= 1000"))
    st = await c.prepare("select $1::int + 1")
    await block("prep", st.fetchval(41))
    async with c.transaction():
        await c.execute("update ap set v = v || 'x' where id < 10")
        await block("cursor", c.fetch("select id from ap order by id limit 3"))
    await block("copy", c.copy_records_to_table('ap', records=[(2000+i, 'c', None) for i in range(10)], columns=['id','v','t']))
    await block("types", c.fetchrow("select $1::numeric, $2::jsonb, $3::text[]", 1.5, '{"a":1}', ['x','y']))
    await block("sum", c.fetchrow("select count(*), md5(string_agg(id||v, ',' order by id)) from ap"))
    await block("listen", c.add_listener('achan', lambda *a: print("notified", a[1] == c.get_server_pid(), a[2], a[3])))
    await c.execute("notify achan, 'hi'")
    await asyncio.sleep(0.3)
    await block("pid", c.fetchval("select 1"))
    await c.close()
asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
