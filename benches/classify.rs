//! The cost of reading a statement in replication mode: `request::analyse` (tokenizer,
//! classifier, inserts, non-deterministic calls) over pgbench's statements and a few harder
//! ones. `cargo bench --bench classify` prints nanoseconds per statement; under `cargo test`
//! it only checks that every statement is read.

use std::hint::black_box;
use std::time::Instant;

use pgmulti::replication::request::analyse;

const STATEMENTS: &[&str] = &[
    "BEGIN;",
    "UPDATE pgbench_accounts SET abalance = abalance + -2920 WHERE aid = 294804;",
    "SELECT abalance FROM pgbench_accounts WHERE aid = 294804;",
    "UPDATE pgbench_tellers SET tbalance = tbalance + -2920 WHERE tid = 48;",
    "UPDATE pgbench_branches SET bbalance = bbalance + -2920 WHERE bid = 2;",
    "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (48, 2, 294804, -2920, CURRENT_TIMESTAMP);",
    "END;",
    "SELECT o.id, sum(l.qty * l.price) FROM orders o JOIN lines l ON l.order_id = o.id \
     WHERE o.created > now() - interval '1 day' /* recent */ GROUP BY o.id ORDER BY 2 DESC LIMIT 20",
    "WITH moved AS (DELETE FROM queue WHERE id IN (SELECT id FROM queue ORDER BY id LIMIT 10 \
     FOR UPDATE SKIP LOCKED) RETURNING *) INSERT INTO done SELECT *, clock_timestamp() FROM moved",
    "CREATE FUNCTION f(x int) RETURNS int LANGUAGE plpgsql AS $body$ BEGIN RETURN x + 1; END $body$",
    "INSERT INTO events (kind, payload) VALUES ('login', '{\"user\": \"o''brien\"}'), ('logout', E'\\n')",
];

fn main() {
    let measuring = std::env::args().any(|a| a == "--bench");
    let rounds = if measuring { 200_000 } else { 10 };
    let mut total_ns = 0.0;
    println!("{:>10}  statement", "ns");
    for sql in STATEMENTS {
        // Warm up, then time `rounds` readings.
        for _ in 0..rounds / 10 {
            black_box(analyse(black_box(sql)));
        }
        let start = Instant::now();
        for _ in 0..rounds {
            black_box(analyse(black_box(sql)));
        }
        let ns = start.elapsed().as_nanos() as f64 / rounds as f64;
        total_ns += ns;
        let shown: String = sql.chars().take(60).collect();
        println!("{ns:>10.0}  {shown}");
    }
    println!(
        "{:>10.0}  mean over {} statements{}",
        total_ns / STATEMENTS.len() as f64,
        STATEMENTS.len(),
        if measuring {
            ""
        } else {
            " (test mode: not a measurement)"
        }
    );
}
