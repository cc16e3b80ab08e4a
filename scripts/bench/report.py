#!/usr/bin/env python3
"""Turns the raw results of scripts/bench.sh into docs/benchmarks.md and an SVG chart.

    report.py --work WORKDIR --out docs/benchmarks.md --svg docs/benchmarks-select.svg
              [--workloads "select select_prep tpcb tpcb_prep connect"]

Reads from WORKDIR: meta.env, targets.tsv, results.tsv, checks.tsv, memory.tsv, commands.txt,
and when present reads.tsv (reads per node and run, from the proxies' counters) and
concurrency.tsv. Standard library only.
"""
import argparse
import csv
import html
import os
import re
import statistics
from collections import defaultdict

WORKLOAD_LABEL = {
    "select": "select-only, `-S -M simple`",
    "select_prep": "select-only, `-S -M prepared`",
    "tpcb": "TPC-B (pgbench's default script), `-M simple`",
    "tpcb_prep": "TPC-B (pgbench's default script), `-M prepared`",
    "connect": "connect per transaction, `-C -S -M simple`",
}
# Which issue-6 goal applies to a given comparison: (workload, clients, target, versus, goal, text)
GOAL_CLIENTS = 8


# Where the missed goals are limited, from profiles of pgmulti on this machine (2 cores, the
# nodes, the middleware and pgbench together), 2026-11-21. Static text: re-measure when the
# code or the machine changes.
LIMITS = """## Where the limits are (profiles)

Measured with `perf record -g`, `strace -c` and CPU time from `/proc/PID/stat` over fixed
transaction counts, pgmulti and PgBouncer run back to back on the same nodes (2026-11-21):

- **Relay, select-only.** Per transaction pgmulti makes the minimum of system calls: 2 reads
  and 2 writes, with one `epoll_wait` serving about 8 events. 93% of its CPU is in the
  kernel (TCP on loopback, waking the receiver, switching tasks). pgmulti and PgBouncer both
  spend 17.8 µs of CPU per transaction (40,000 transactions, `-c 8`), about 20% of the CPU a
  transaction costs on this machine in all. A middleware costing nothing would reach about
  1.26× PgBouncer, so 1.3× cannot be reached on a machine where pgbench, the middleware and
  PostgreSQL share two cores; the same hop (two more socket writes and wake-ups per
  transaction than a direct connection) bounds relay/direct near 0.7×.
- **Replication, TPC-B.** Every node runs every write, and the three nodes' PostgreSQL
  processes take about 63% of the CPU: at a direct TPC-B rate X, three nodes cannot exceed
  about X/3 here. `-M simple`: 2× pgpool-II lies above that bound. `-M prepared`: the bound
  is near 3× pgpool-II. pgmulti now spends about 265 µs of CPU per sync transaction (`-c 8`,
  4,000 transactions; 340 µs earlier in this work), 80% of it in the kernel: 23 reads and 23
  writes per transaction, the minimum for 7 client requests and 16 node round trips (lead
  first, then the replicas; COMMIT on the replicas, then the lead). What was cut: a second
  write to the client per statement (the lead's answer went out before the replicas had
  answered; 27 → 23 writes), and heap allocations, counted with `valgrind --tool=dhat` over
  a fixed number of transactions: 308 → 157 per transaction (no copy per node message or
  per batched client message, timestamps formatted only when a rewrite uses them). With
  `write_ack = async` a replica gets a transaction's statements in one write at COMMIT
  instead of one per statement: 215–245 µs per transaction. Reading the SQL costs little:
  `cargo bench --bench classify` puts `request::analyse` at about 0.1–2 µs per statement
  (0.85 µs on average over its sample), about 1% of a transaction's CPU.
  Found and fixed on the way: an advisory lock serialised every INSERT into a table, sequence
  or not (TPC-B's history), and BEGIN cost a round trip to every node.
- **Connect per transaction.** In session pooling a pooled connection is reset with
  `DISCARD ALL` between clients (and gets the next client's settings, pipelined with the
  reset when they match the last client's); in transaction pooling, as PgBouncer's, nothing
  is reset. Both modes are measured; the goal takes the better. Both pgmulti modes get the
  pool sizes PgBouncer gets: with fewer idle connections than clients connecting (the
  default `max_pool_size = 20` against 64 clients) pgmulti's session pooling closed and
  reopened node connections and fell to a fifth of PgBouncer's rate. In transaction pooling
  clients beyond `max_pool_size` connections now wait in line, as PgBouncer's; before, they
  opened extra connections (select-only at 64 clients: a third of PgBouncer's rate).
- **Memory per idle client.** Compared in transaction pooling on both sides (`pool_mode =
  transaction`: an idle pgmulti client holds no node connection, as PgBouncer's). What is
  left per client is its session (392 bytes; its replication state is made only in
  replication mode), its startup parameters (the usual names are static strings) and log
  prefix, and a 24-byte slot in the loop's table; a logged-in session frees its buffers at
  once. At 5,000 clients this took pgmulti from 1.3 to 0.9 KiB per client. With session
  pooling each client also keeps its node connection.
- **Instruction counts** (`valgrind --tool=callgrind`, pgmulti's user-space instructions per
  transaction, from runs of N and 3N transactions with `-c 1`, repeatable to 0.5%): relay
  select-only about 5,200, with no heap allocation per transaction in session pooling and 7
  in transaction pooling (copies of the pool key; dhat); replication TPC-B `-M prepared`
  about 204,000 (244,000 before
  this work's changes), of which allocation is about 12%. The kernel's share of pgmulti's
  CPU (about 80%) is not in these counts.
"""


def read_tsv(path):
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def read_meta(path):
    meta = {}
    with open(path) as f:
        for line in f:
            if "=" in line:
                k, v = line.rstrip("\n").split("=", 1)
                meta[k] = v
    return meta


def fnum(x, digits=0):
    if x is None:
        return "–"
    return f"{x:,.{digits}f}"


def ms(us):
    if us is None:
        return "–"
    return f"{us / 1000:.2f}"


def kib(v):
    try:
        return f"{int(v) / 1024:.1f} MiB"
    except (TypeError, ValueError):
        return "–"


def ratio(a, b):
    if a is None or not b:
        return None
    return a / b


def fratio(r):
    return "–" if r is None else f"{r:.2f}×"


class Cell:
    """Median of one (target, workload, clients) over the rounds."""

    def __init__(self, rows):
        ok = [r for r in rows if r["status"] == "ok"]
        self.runs = len(rows)
        self.errors = len(rows) - len(ok)
        self.error_notes = sorted({r["note"] for r in rows if r["status"] != "ok" and r["note"]})
        self.tps = statistics.median([float(r["tps"]) for r in ok]) if ok else None
        p50 = [int(r["p50_us"]) for r in ok if r["p50_us"].isdigit()]
        p99 = [int(r["p99_us"]) for r in ok if r["p99_us"].isdigit()]
        self.p50 = statistics.median(p50) if p50 else None
        self.p99 = statistics.median(p99) if p99 else None
        self.all_tps = [float(r["tps"]) for r in ok]
        self.notes = [r["note"] for r in rows if r["note"]]
        # pgbench's "number of failed transactions" and "… actually processed", summed over the
        # rounds; None when no run reported it (older results.tsv, pgbench that did not finish).
        self.failed = _sum([r.get("failed") for r in rows])
        self.processed = _sum([r.get("processed") for r in rows])


def _sum(values):
    nums = [int(v) for v in values if v and v.isdigit()]
    return sum(nums) if nums else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--svg", required=True)
    ap.add_argument("--workloads", default="select select_prep tpcb tpcb_prep connect")
    args = ap.parse_args()
    W = args.work

    meta = read_meta(os.path.join(W, "meta.env"))
    targets = []
    with open(os.path.join(W, "targets.tsv")) as f:
        for line in f:
            p = line.rstrip("\n").split("\t")
            p += [""] * (7 - len(p))
            na = {}
            for item in p[6].split(";"):
                if "=" in item:
                    k, v = item.split("=", 1)
                    na[k] = v
            targets.append(
                dict(name=p[0], group=p[1], repl=p[2] in ("yes", "stream"), stream=p[2] == "stream",
                     workloads=p[3].split(), label=p[4], skip=p[5], na=na)
            )
    tmap = {t["name"]: t for t in targets}
    results = read_tsv(os.path.join(W, "results.tsv"))
    checks = read_tsv(os.path.join(W, "checks.tsv"))
    reads = read_tsv(os.path.join(W, "reads.tsv"))
    memory = read_tsv(os.path.join(W, "memory.tsv"))
    workloads = args.workloads.split()
    clients = [int(c) for c in meta.get("clients", "").split()]

    grouped = defaultdict(list)
    for r in results:
        grouped[(r["target"], r["workload"], int(r["clients"]))].append(r)
    cells = {k: Cell(v) for k, v in grouped.items()}

    def tps(t, w, c):
        cell = cells.get((t, w, c))
        return cell.tps if cell else None

    peers = [t["name"] for t in targets if t["group"] == "peer"]

    def best_peer(w, c):
        best = None
        for p in peers:
            v = tps(p, w, c)
            if v is not None and (best is None or v > best[1]):
                best = (p, v)
        return best

    check_by = defaultdict(list)
    for ch in checks:
        check_by[(ch["target"], ch["workload"], int(ch["clients"]))].append(ch)

    out = []
    o = out.append
    quick = meta.get("quick") == "1"
    o("# Benchmarks: pgmulti, PgBouncer, pgpool-II and a direct connection\n")
    o(f"Generated by `{meta.get('invocation', 'scripts/bench.sh').strip()}` on {meta.get('date')} "
      f"({int(meta.get('elapsed_s', '0')) // 60} min {int(meta.get('elapsed_s', '0')) % 60} s). "
      "Re-run it to refresh this page; it is overwritten.\n")
    if quick:
        o("> **Quick run** (`--quick`): scale %s, %s rounds of %s s runs, clients %s. The numbers show "
          "the shape, not precise values; run `scripts/bench.sh` (no `--quick`: 3 rounds × 10 s, "
          "clients 1, 8, 64, 256, scale 50) for numbers to quote.\n"
          % (meta.get("scale"), meta.get("rounds"), meta.get("duration"), ", ".join(map(str, clients))))

    o("## How to run\n")
    o("```sh\nscripts/bench.sh --quick            # ~4 min: scale 10, 2 rounds x 1 s, clients 8 and 64\n"
      "scripts/bench.sh                    # full, ~75 min: scale 50, 3 rounds x 10 s, clients 1 8 64 256\n"
      "scripts/bench.sh --quick --rev HEAD # a committed revision instead of the working tree\n"
      "scripts/bench.sh --keep --out /tmp/b.md   # keep the work folder (configs, logs, raw TSV)\n"
      "# the streaming comparison, beside replication mode and pgpool-II (--quick: about 10 min):\n"
      "BENCH_TARGETS=\"direct repl_sync pgpool stream stream_noryw pgpool_stream\" scripts/bench.sh --quick --out /tmp/b.md\n```\n")
    o("The script installs `pgbouncer` and `pgpool2` with apt-get when run as root and they are "
      "missing (an ordinary user must install them first), builds pgmulti with "
      "`cargo build --release`, creates 3 fresh PostgreSQL 15 nodes in a work folder (as "
      "`postgres` when root) and, for the streaming targets, a primary with 2 hot standbys, "
      "loads `pgbench -i` data, starts every target on free 127.0.0.1 "
      "ports with its own configuration, measures, writes this page and stops everything.\n")

    o("## Machine and versions\n")
    o("| | |\n|---|---|")
    rows = [
        ("CPU", f"{meta.get('nproc')} × {meta.get('cpu')}"),
        ("Memory", meta.get("mem")),
        ("Kernel / OS", f"{meta.get('kernel')} / {meta.get('os')}"),
        ("Load average (1/5/15 min) at start / end",
         f"{meta.get('loadavg_start')} / {meta.get('loadavg_end')} (a shared machine; targets alternate run by run)"),
        ("PostgreSQL", meta.get("postgres")),
        ("pgbench", meta.get("pgbench")),
        ("PgBouncer", meta.get("pgbouncer")),
        ("pgpool-II", meta.get("pgpool")),
        ("pgmulti", f"{meta.get('pgmulti')}, commit {meta.get('commit')}"),
        ("Run as", meta.get("user")),
    ]
    for k, v in rows:
        o(f"| {k} | {html.escape(str(v or ''))} |")
    o("")

    o("## Method\n")
    o(f"- 3 nodes, PostgreSQL 15, `pgbench -i -s {meta.get('scale')}` on each (identical data); "
      f"`shared_buffers = {meta.get('shared_buffers')}`, `max_connections = {meta.get('node_max_connections')}`, "
      "`fsync`, `synchronous_commit` and `full_page_writes` off: the nodes are throwaway and the disk of a "
      "shared machine should measure as little as possible — the subject is the middleware.")
    o("- Single-node targets (direct, PgBouncer, pgmulti relay) use database `bench_direct` on node 0. "
      "Each replicating target has its own database on all 3 nodes, so a divergence can't be blamed on another target.")
    o(f"- Every run: `pgbench -h 127.0.0.1 -p PORT -U postgres OPTIONS -c CLIENTS -j {meta.get('threads')} "
      f"-T {meta.get('duration')} -l --log-prefix=…` over TCP. Each round runs every workload × client count "
      "× target; for one workload and client count the targets run back to back, and the order rotates "
      f"by one target every round. {meta.get('rounds')} rounds; the tables show medians over the rounds.")
    o(f"- Before round 1 every target serves {max(clients) if clients else '–'} clients once (`pgbench -S -t 20`, not "
      "measured), so that pooled node connections exist before the first run as they do in later ones.")
    o("- TPS is pgbench's `tps = …` (without initial connection time; with `-C` it includes the "
      "reconnections). p50/p99 come from pgbench's per-transaction log (3rd column, µs; with `-C` it "
      "includes the connect): percentiles per run, then the median over the rounds.")
    o("- **× direct** = TPS / TPS of the direct connection, same workload and clients. **× best peer** = "
      "TPS / the highest TPS among PgBouncer (transaction), PgBouncer (session) and pgpool-II for the same "
      "workload and clients.")
    o("- After every TPC-B run on a replicating target, every pgbench table is compared across the 3 nodes, "
      "on the nodes directly: `md5(string_agg(t::text …))` for branches, tellers and history; count and "
      "sums of `abalance`, `aid*abalance`, `bid*abalance` for accounts. A target whose nodes differed is "
      "marked **DIVERGED** in the table.")
    o(f"- PgBouncer: one instance, `auth_type = trust`, `max_client_conn = 400`; database `bench_tx` with "
      f"`pool_mode = transaction`, `pool_size = 20`; `bench_sess` with `pool_mode = session`, "
      f"`pool_size = {meta.get('pool_size_session')}` (≥ clients). Logging at its defaults.")
    o(f"- pgpool-II: `backend_clustering_mode = 'native_replication'` over the 3 nodes, "
      f"`load_balance_mode = on` (weights 1/1/1), `num_init_children = {meta.get('pgpool_children')}`, "
      "`max_pool = 1`, `enable_pool_hba = off`, no pool_passwd (trust to the nodes), health checks, "
      "failover, watchdog and query cache off, started in the foreground with `-n -D`.")
    o("- pgmulti: `mode = relay` to node 0 with `log_level = info`, a second instance with "
      "`log_level = trace` (the trace goes to a file in the work folder, emptied after each run), and a "
      "third with `pool_mode = transaction`, `max_pool_size = 20` (PgBouncer's transaction pool size); "
      "`mode = replication` over the 3 nodes with `write_ack = sync` and `async`, and sync with "
      "`commit_protocol = two_phase` (nodes with `max_prepared_transactions` = clients + 8; the decision log "
      "in the work folder). Session pooling and "
      f"replication have `max_pool_size = {meta.get('pool_size_session')}`, as PgBouncer's session pool. "
      "`backend_sslmode = disable` (the nodes have no TLS; PgBouncer and pgpool-II don't try TLS either), "
      "`health_check_period = 0`.")
    if any(t["stream"] for t in targets):
        lag = int(meta.get("stream_max_lag", str(16 << 20)))
        period = meta.get("stream_check_period", "1")
        o("- Streaming bed (the streaming targets): 3 more PostgreSQL 15 servers with the settings above: "
          "`stream0`, the primary (initdb; `wal_level = replica`, the default), and `stream1`, `stream2`, hot "
          "standbys made from it with `pg_basebackup -R -X stream -C -S streamN` (asynchronous streaming, a "
          "replication slot each). `pgbench -i` runs on the primary only, into one database per streaming "
          "target; the standbys get all of it by streaming and are waited for before the first run. After "
          "every TPC-B run on a streaming target the script waits until both standbys have replayed the "
          "primary's WAL (`pg_last_wal_replay_lsn()` ≥ the primary's `pg_current_wal_insert_lsn()`), then "
          "compares the tables on the 3 nodes directly, as for replication.")
        o(f"- pgmulti `mode = streaming` over the 3 streaming nodes, `read_your_writes = on` (the default) and a "
          f"second instance with `read_your_writes = off`; `health_check_period = {period}` (the health checks "
          f"read each node's role and WAL position, which reads are routed by), `health_check_max_retries = 3`, "
          f"`max_standby_lag = {lag // 1048576}MB` (the default); pools as for replication. pgpool-II "
          "`backend_clustering_mode = 'streaming_replication'`, `load_balance_mode = on` with weights 0/1/1 "
          f"(reads on the standbys only, as pgmulti's streaming mode reads), `sr_check_period = {period}`, "
          f"`sr_check_user = 'postgres'`, `delay_threshold = {lag}` (bytes, as `max_standby_lag`), no failover; "
          "the other settings as for its native replication target.")
    o("- TPC-B runs only on the replicating targets and on the direct connection (the reference); pgmulti "
      "relay (single node, **not replicated**) is included too, as a reference for the cost of the hop. "
      "PgBouncer is not run on TPC-B.\n")

    # --- issue 6 goals ----------------------------------------------------------------------
    c = GOAL_CLIENTS
    goals = []

    def goal(text, num, den, minimum, extra=""):
        r = ratio(num, den)
        if num is None or den is None:
            verdict = "not measured (skipped or failed)"
        else:
            verdict = "**met**" if r >= minimum else "missed"
        goals.append((text, fratio(r), f"≥ {minimum}×", verdict + extra))

    def div_flag(t, w, cc):
        chs = check_by.get((t, w, cc), [])
        if any(ch["verdict"] != "identical" for ch in chs):
            return " — nodes DIVERGED"
        return ""

    def best(*values):
        return max([v for v in values if v is not None], default=None)

    # pgmulti relay in whichever pooling mode did better (session or transaction).
    relay_select = best(tps("relay_info", "select", c), tps("relay_tx", "select", c))
    goal(f"select-only simple, {c} clients: pgmulti relay (best mode) / PgBouncer transaction",
         relay_select, tps("pgb_tx", "select", c), 1.3)
    goal(f"select-only simple, {c} clients: pgmulti relay (best mode) / direct",
         relay_select, tps("direct", "select", c), 0.8)
    goal(f"select-only simple, {c} clients: pgmulti replication sync / pgpool-II",
         tps("repl_sync", "select", c), tps("pgpool", "select", c), 1.3)
    goal(f"select-only prepared, {c} clients: pgmulti relay / PgBouncer session",
         tps("relay_info", "select_prep", c), tps("pgb_sess", "select_prep", c), 1.3)
    goal(f"TPC-B simple, {c} clients: pgmulti replication sync / pgpool-II",
         tps("repl_sync", "tpcb", c), tps("pgpool", "tpcb", c), 2.0, div_flag("repl_sync", "tpcb", c))
    goal(f"TPC-B prepared, {c} clients: pgmulti replication sync / pgpool-II",
         tps("repl_sync", "tpcb_prep", c), tps("pgpool", "tpcb_prep", c), 3.0, div_flag("repl_sync", "tpcb_prep", c))
    goal(f"TPC-B simple, {c} clients: pgmulti replication async / sync",
         tps("repl_async", "tpcb", c), tps("repl_sync", "tpcb", c), 1.0, div_flag("repl_async", "tpcb", c))
    bp = best(tps("pgb_tx", "connect", c), tps("pgb_sess", "connect", c))
    goal(f"connect per transaction, {c} clients: pgmulti relay (best mode) / best PgBouncer mode",
         best(tps("relay_info", "connect", c), tps("relay_tx", "connect", c)), bp, 1.2)
    goal(f"select-only simple, {c} clients: pgmulti trace / pgmulti info",
         tps("relay_trace", "select", c), tps("relay_info", "select", c), 0.7)
    if "repl_sync_base" in tmap:
        base = meta.get("base", "base").split()[0]
        for w in ("tpcb", "tpcb_prep"):
            goal(f"{WORKLOAD_LABEL.get(w, w)}, {c} clients: pgmulti replication sync / the same at {base} (--base)",
                 tps("repl_sync", w, c), tps("repl_sync_base", w, c), 0.9, div_flag("repl_sync", w, c))
    mem = {m["target"]: m for m in memory}
    try:
        pm = float(mem["pgmulti"]["kib_per_client"])
        pb = float(mem["pgbouncer"]["kib_per_client"])
        goals.append(("memory per idle client, transaction pooling: pgmulti / PgBouncer", f"{pm:.1f} / {pb:.1f} KiB",
                      "≤ PgBouncer", "**met**" if pm <= pb else "missed"))
    except (KeyError, ValueError):
        goals.append(("memory per idle client: pgmulti / PgBouncer", "–", "≤ PgBouncer", "not measured"))

    o("## Goals of issue 6 (ratios from this run)\n")
    o("| Comparison | Measured | Goal | Verdict |\n|---|---|---|---|")
    for g in goals:
        o("| " + " | ".join(g) + " |")
    o("\n\"not measured\": a target of the comparison is not implemented yet, failed (see the tables below), "
      f"or the client count {c} was not in this run.\n")
    o(LIMITS)

    # --- results per workload -----------------------------------------------------------------
    o("## Results\n")
    svg_name = os.path.basename(args.svg)
    for w in workloads:
        o(f"### {WORKLOAD_LABEL.get(w, w)}\n")
        if w == "select":
            o(f"![select-only, -M simple: median TPS by clients]({svg_name})\n")
        o("| Clients | Target | TPS (median) | p50 ms | p99 ms | × direct | × best peer | Notes |")
        o("|---:|---|---:|---:|---:|---:|---:|---|")
        skipped_rows, na_rows = [], []
        best_lines = []
        for cc in clients:
            bpe = best_peer(w, cc)
            if bpe:
                best_lines.append(f"{cc} clients: {tmap[bpe[0]]['label']} ({fnum(bpe[1])} tps)")
            d = tps("direct", w, cc)
            for t in targets:
                name = t["name"]
                if w not in t["workloads"]:
                    if w in t["na"] and cc == clients[0]:
                        na_rows.append(f"| all | {t['label']} | n/a | | | | | {t['na'][w]} |")
                    continue
                if t["skip"]:
                    if cc == clients[0]:
                        skipped_rows.append(f"| all | {t['label']} | skipped | | | | | {t['skip']} |")
                    continue
                cell = cells.get((name, w, cc))
                if cell is None:
                    continue
                notes = []
                tps_txt = fnum(cell.tps)
                if cell.errors:
                    notes.append(f"errors in {cell.errors} of {cell.runs} runs: " + "; ".join(cell.error_notes)[:200])
                    if cell.tps is None:
                        tps_txt = "error"
                chs = check_by.get((name, w, cc), [])
                if chs:
                    bad = [ch for ch in chs if ch["verdict"] != "identical"]
                    if bad:
                        tables = sorted({x for ch in bad for x in ch["detail"].split()})
                        tps_txt += " ⚠"
                        notes.insert(0, f"**DIVERGED** after {len(bad)} of {len(chs)} runs ("
                                     + ", ".join(tables[:4]) + ")")
                    else:
                        notes.insert(0, f"nodes identical after all {len(chs)} runs")
                if cell.failed:
                    notes.append(f"{cell.failed:,} failed transactions")
                if name.startswith("relay") and w.startswith("tpcb"):
                    notes.append("single node, not replicated")
                trace_bytes = [int(n.split("=")[1]) for n in cell.notes if n.startswith("trace bytes=")]
                if trace_bytes:
                    notes.append(f"trace log {statistics.median(trace_bytes) / 1e6:.0f} MB per run")
                if len(cell.all_tps) > 1:
                    spread = (max(cell.all_tps) - min(cell.all_tps)) / max(cell.tps, 1e-9) * 100
                    notes.append(f"spread {spread:.0f}%")
                rd = ratio(cell.tps, d)
                rb = ratio(cell.tps, bpe[1] if bpe else None)
                if w.startswith("tpcb") and not t["repl"] and t["group"] != "ref":
                    rb = None  # a single node against a replicating peer: not comparable
                o(f"| {cc} | {t['label']} | {tps_txt} | {ms(cell.p50)} | {ms(cell.p99)} | "
                  f"{fratio(rd)} | {fratio(rb)} | {'; '.join(notes)} |")
        for r in na_rows + skipped_rows:
            o(r)
        o("")
        if best_lines:
            o("Best peer: " + "; ".join(best_lines) + ".\n")
        o("Spread = (max − min) / median TPS over the rounds.\n" if w == workloads[0] else "")

    streaming_section(o, meta, targets, tmap, cells, check_by, reads, workloads, clients)

    # --- caveats ----------------------------------------------------------------------------
    o("## Caveats\n")
    o("- Everything (3 nodes, the middleware, pgbench) shares the same cores, so a middleware that uses "
      "more CPU also takes it from the nodes and from pgbench; this favours light processes, as a "
      "single small server would in production too. Other jobs may run on the machine at the same time: "
      "the alternation spreads their effect over all targets, and the spread column shows how steady a "
      "cell was.")
    o("- pgpool-II's configuration is the script's best reading of the 4.3 sample for native replication with "
      "load balancing and no failover; it is not tuned further (e.g. no `memory_cache_enabled`, "
      "`max_pool = 1`). Its select-only numbers include load balancing over 3 nodes on the same 2 cores.")
    o("- PgBouncer 1.18 (Debian 12) has no prepared statements in transaction pooling; newer PgBouncer "
      "releases do.")
    o("- pgmulti relay runs twice: session pooling (a client holds its node connection until it leaves, and "
      "the connection is reset with `DISCARD ALL` before the next client takes it) and transaction pooling "
      "(`pool_mode = transaction`, as PgBouncer's: no reset, no session state; select-only simple and `-C` "
      "only). TPC-B through pgmulti relay reaches one node and is not comparable with pgpool-II (× best peer "
      "left out).")
    if any(t["stream"] for t in targets):
        o("- Streaming: the standbys replay on the same 2 cores, so the primary's writes cost twice more CPU "
          "than on one node whichever proxy is in front; reads per node come from each proxy's own counters, "
          "which count slightly different things (see the streaming section). pgpool-II chooses a session's "
          "load-balance node once per session, so its split between the standbys varies with few clients; "
          "pgmulti chooses per read.")
    o("- Memory: RSS only (user space); kernel socket buffers are not counted for either program.\n")

    # --- consistency ---------------------------------------------------------------------------
    o("## Replication consistency\n")
    if checks:
        by_target = defaultdict(list)
        for ch in checks:
            by_target[ch["target"]].append(ch)
        o("| Target | Checks | Identical | Diverged | First divergence |\n|---|---:|---:|---:|---|")
        for t, chs in by_target.items():
            bad = [ch for ch in chs if ch["verdict"] != "identical"]
            first = (f"round {bad[0]['round']}, {bad[0]['workload']}, {bad[0]['clients']} clients: "
                     f"{bad[0]['verdict']} {bad[0]['detail']}") if bad else ""
            o(f"| {tmap[t]['label']} | {len(chs)} | {len(chs) - len(bad)} | {len(bad)} | {first} |")
        o("\nChecks run in order, on the same database; once accounts, branches or tellers differ they "
          "stay different, so every later check of that target fails too. History is emptied by "
          "pgbench before every TPC-B run.\n")
    else:
        o("No replicated TPC-B run in this run.\n")

    # --- concurrent writes ------------------------------------------------------------------
    o("## Concurrent writes\n")
    cw_path = os.path.join(W, "concurrency.tsv")
    cw = read_tsv(cw_path) if os.path.exists(cw_path) else []
    if cw:
        names = list(dict.fromkeys(r["target"] for r in cw))
        wls = list(dict.fromkeys(r["workload"] for r in cw))
        by = {(r["target"], r["workload"]): r for r in cw}
        o("The OLTP patterns whose outcome depends on what each node sees "
          "(`scripts/bench/concurrency/workloads.txt`), each with fresh tables, `pgbench -c 8 -j 2 -T "
          f"{meta.get('cw_duration', '?')} --max-tries 10`, then every node's tables compared directly "
          "(count and md5 of all rows) and the proxy's `SHOW POOL_NODES` read. **identical**: every node "
          "holds the same rows and is still attached; **DIVERGED**: the nodes differ; **DETACHED**: the proxy "
          "took a node out; **hung**: pgbench did not finish within a minute of its run time. Cells: "
          "verdict, transactions processed / failed / retried.\n")
        o("| Workload | " + " | ".join(tmap[n]["label"] if n in tmap else n for n in names) + " |")
        o("|---|" + "---|" * len(names))
        for w in wls:
            cells_ = []
            for n in names:
                r = by.get((n, w))
                if not r:
                    cells_.append("–")
                    continue
                v = r["verdict"]
                v = f"**{v}**" if v.split()[0] in ("DIVERGED", "DETACHED", "hung", "refused") else v
                cells_.append(f"{v}, {r['processed']} / {r['failed']} / {r['retried']}")
            o(f"| {w} | " + " | ".join(cells_) + " |")
        o("\npgpool-II runs as in the TPC-B runs (native replication, `replication_stop_on_mismatch = off`, "
          "`failover_if_affected_tuples_mismatch = off`): it does not compare the nodes' results. pgmulti "
          "replicates these statements by their effect on the lead (docs/replication.md, \"Writes whose "
          "outcome depends on what a node sees\"). Failed transactions of max_plus_one are unique "
          "violations, as on one PostgreSQL.\n")
    else:
        o("Not measured.\n")

    # --- effect checks -------------------------------------------------------------------------
    o("## Cost of effect checks on the nodes\n")
    effects = read_tsv(os.path.join(W, "effect_cost.tsv")) if os.path.exists(os.path.join(W, "effect_cost.tsv")) else []
    if effects:
        med = {}
        for form in ("plain", "lead", "replica"):
            vals = sorted(float(e["tps"]) for e in effects if e["form"] == form)
            med[form] = vals[len(vals) // 2] if vals else None
        o("| Form of the statement | median TPS on node 0 | / as written |")
        o("|---|---:|---:|")
        for form, label in (("plain", "as written (`UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = :aid`)"),
                            ("lead", "as the lead runs it (`… RETURNING aid::text, md5(ROW(pgbench_accounts.*)::text)`)"),
                            ("replica", "as a replica runs it (keyed, in a CTE summing the rows' hashes)")):
            o(f"| {label} | {fnum(med[form])} | {fratio(ratio(med[form], med['plain']))} |")
        o("\npgbench -c 8 straight on node 0 (no pgmulti), the three forms alternating, "
          f"{meta.get('rounds')} rounds × {meta.get('duration')} s (`scripts/bench/effects/`). Only writes whose "
          "outcome depends on what a node sees (subquery predicates, `SKIP LOCKED`, volatile predicates; "
          "docs/replication.md) take these forms; a keyed statement such as TPC-B's runs as written, so the "
          "TPC-B figures above pay none of it. The cost is the node's: hashing each changed row and, on the "
          "replicas, the CTE; pgmulti's side (reading the lead's RETURNING rows) is small beside it.\n")
    else:
        o("Not measured.\n")

    # --- memory --------------------------------------------------------------------------------
    o("## Memory: idle client connections\n")
    if memory:
        o("| Program | Clients held | RSS idle | RSS, first half | RSS, all | KiB per client | marginal KiB per client | peak RSS (VmHWM) | Notes |")
        o("|---|---:|---:|---:|---:|---:|---:|---:|---|")
        for m in memory:
            o(f"| {m['target']} | {m['clients_ok']} of {m['clients_asked']} | {kib(m['rss_idle_kib'])} | "
              f"{kib(m['rss_half_kib'])} | {kib(m['rss_kib'])} | **{m['kib_per_client']}** | {m['kib_marginal']} | "
              f"{kib(m['hwm_kib'])} | {m['note']} |")
        o("\nA fresh instance of each. `scripts/bench/idle_clients.py` opens the connections (StartupMessage as "
          "postgres, trust, read until ReadyForQuery, 100 logins in flight at a time, then hold), in two halves by two "
          "processes; VmRSS is read from /proc before, after the first half and after all. **KiB per client** = "
          "(RSS all − RSS idle) / clients; **marginal** = (RSS all − RSS first half) / clients of the second half, "
          "which leaves out one-time growth (allocator arenas, tables sized for the peak). Node 0 is restarted with "
          "a higher `max_connections` for this, because pgmulti with session pooling (`pgmulti_session`) holds one node "
          "connection per client; with transaction pooling (`pgmulti`), as PgBouncer's idle clients, it holds "
          "none.\n")
    else:
        o("Not measured.\n")

    # --- commands ------------------------------------------------------------------------------
    o("## Exact commands\n")
    o("How the script sets up (`$WORK` is its work folder; node commands run as `postgres` via "
      "`runuser` when root):\n")
    o("```")
    o("initdb -D $WORK/pg/nodeN -U postgres --auth=trust -E UTF8 --locale=C   # N = 0, 1, 2; settings below")
    o("pg_ctl -D $WORK/pg/nodeN -l $WORK/pg/nodeN.log -w start")
    o(f"pgbench -i -q -s {meta.get('scale')} -h 127.0.0.1 -p NODE_PORT -U postgres bench_tpl   # on each node")
    o("psql -c 'CREATE DATABASE bench_direct TEMPLATE bench_tpl STRATEGY FILE_COPY'           # node 0")
    o("psql -c 'CREATE DATABASE bench_pgpool TEMPLATE bench_tpl STRATEGY FILE_COPY'           # every node")
    o("pgbouncer [-u postgres] $WORK/pgbouncer/pgbouncer.ini")
    o("pgpool -n -D -f $WORK/pgpool/pgpool.conf -F $WORK/pgpool/pcp.conf -a $WORK/pgpool/pool_hba.conf")
    o("pgmulti -f $WORK/pgmulti/relay_info.conf      # and relay_trace.conf")
    if meta.get("stream_bed") == "1":
        o("# the streaming bed: primary stream0 (initdb as above), hot standbys stream1 and stream2")
        o("pg_basebackup -h 127.0.0.1 -p STREAM0_PORT -U postgres -D $WORK/pg/streamN -R -X stream -c fast -C -S streamN")
        o(f"pgbench -i -q -s {meta.get('scale')} -h 127.0.0.1 -p STREAM0_PORT -U postgres bench_tpl   # primary only")
        o("psql -c 'CREATE DATABASE bench_stream TEMPLATE bench_tpl STRATEGY FILE_COPY'           # primary; as each streaming target")
        o("pgmulti -f $WORK/pgmulti/stream.conf           # and stream_noryw.conf")
        o("pgpool -n -D -f $WORK/pgpool_stream/pgpool.conf -F $WORK/pgpool_stream/pcp.conf -a $WORK/pgpool_stream/pool_hba.conf")
    o("```\n")
    o("<details><summary>Every distinct pgbench command of this run (ports and work folder change from run to run)</summary>\n")
    o("```")
    seen = set()
    with open(os.path.join(W, "commands.txt")) as f:
        for line in f:
            cmd = line.rstrip("\n").split("\t")[3]
            cmd = cmd.replace(W, "$WORK")
            cmd = re.sub(r"--log-prefix=\$WORK/txlog/r\d+\.", "--log-prefix=$WORK/txlog/rN.", cmd)
            if cmd not in seen:
                seen.add(cmd)
                o(cmd)
    o("```\n</details>\n")
    for title, fname in (("Node settings appended to postgresql.conf (node 0)", "node0.conf"),
                         ("pgbouncer.ini", "pgbouncer.ini"), ("pgpool.conf", "pgpool.conf"),
                         ("pgmulti, relay, log_level info", "relay_info.conf"),
                         ("pgmulti, relay, log_level trace", "relay_trace.conf"),
                         ("Streaming standby stream1: settings after the primary's, and what pg_basebackup -R wrote",
                          "stream1.conf"),
                         ("pgmulti, streaming", "stream.conf"),
                         ("pgmulti, streaming, read_your_writes = off", "stream_noryw.conf"),
                         ("pgpool.conf, streaming replication", "pgpool_stream.conf")):
        path = os.path.join(W, "runs", fname)
        if os.path.exists(path):
            with open(path) as f:
                text = f.read().replace(W, "$WORK")
            o(f"<details><summary>{html.escape(title)}</summary>\n\n```\n{text.rstrip()}\n```\n</details>\n")
    o("Configuration files the script writes (see `scripts/bench.sh`, functions `create_nodes`, "
      "`write_pgbouncer_conf`, `start_pgpool`, `write_pgmulti_conf`); `--keep` keeps them in the work folder.\n")

    with open(args.out, "w") as f:
        f.write("\n".join(out).rstrip() + "\n")

    write_svg(args.svg, targets, clients, lambda t, cc: tps(t, "select", cc), meta)


STREAM_READ_WORKLOADS = ("select", "select_prep", "connect")


def streaming_section(o, meta, targets, tmap, cells, check_by, reads, workloads, clients):
    """The streaming comparison (issue 14): pgmulti mode = streaming with read_your_writes on
    and off, pgpool-II's streaming replication mode, beside pgmulti replication sync."""
    names = [t["name"] for t in targets if t["stream"]]
    if not names:
        return
    o("## Streaming mode: pgmulti beside pgpool-II's streaming replication mode\n")
    o("One primary and two hot standbys, kept by PostgreSQL's own streaming replication (see Method); "
      "every write goes to the primary, reads outside a transaction block to a standby. **RYW cost** = "
      "TPS with `read_your_writes = on` (the default) / TPS with it `off`: with it on, pgmulti asks the "
      "primary for its WAL position in the round trip of every commit, and sends a session's reads to a "
      "standby only once that standby has replayed the session's last commit (docs/streaming.md). "
      "pgbench's select-only sessions never write, so there the two should be alike; in TPC-B every "
      "statement is in a transaction block and goes to the primary, so the WAL-position question is "
      "all that differs. Ratios below 1× are costs.\n")
    skipped = [t for t in targets if t["stream"] and t["skip"]]
    for t in skipped:
        o(f"- **{t['label']}**: skipped — {t['skip']}")
    if skipped:
        o("")

    def tps(t, w, c):
        cell = cells.get((t, w, c))
        return cell.tps if cell else None

    cols = [n for n in ("stream", "stream_noryw", "pgpool_stream", "repl_sync", "pgpool") if n in tmap]
    head = [tmap[n]["label"] for n in cols]
    ratios = [("RYW cost (stream / stream_noryw)", "stream", "stream_noryw"),
              ("pgmulti streaming / pgpool-II streaming", "stream", "pgpool_stream"),
              ("pgmulti streaming / pgmulti replication sync", "stream", "repl_sync")]
    ratios = [r for r in ratios if r[1] in tmap and r[2] in tmap]
    o("| Workload | Clients | " + " | ".join(head + [r[0] for r in ratios]) + " |")
    o("|---|---:|" + "---:|" * (len(head) + len(ratios)))
    for w in workloads:
        for c in clients:
            vals = [tps(n, w, c) for n in cols]
            if all(v is None for v in vals):
                continue
            row = [fnum(v) for v in vals] + [fratio(ratio(tps(a, w, c), tps(b, w, c))) for _, a, b in ratios]
            o(f"| {WORKLOAD_LABEL.get(w, w)} | {c} | " + " | ".join(row) + " |")
    o("\nMedian TPS over the rounds, as in the tables above.\n")

    # Reads per node, summed over the rounds, from the proxies' own counters.
    spread = defaultdict(lambda: defaultdict(int))
    roles = {}
    for r in reads:
        try:
            n = int(r["node"])
            spread[(r["target"], r["workload"], int(r["clients"]))][n] += max(int(r["reads"]), 0)
        except (KeyError, ValueError):
            continue
        roles[(r["target"], n)] = r["role"]

    def spread_text(t, w, c):
        per = spread.get((t, w, c))
        if not per:
            return "–"
        total = sum(per.values()) or 1
        return " · ".join(f"{n} {roles.get((t, n), '')}: {v:,} ({100 * v / total:.0f}%)" for n, v in sorted(per.items()))

    # --- the checks issue 14 asks for ---
    rows = []
    stream_cells = [(n, k, cells[k]) for n in names for k in cells if k[0] == n]
    failed = sum(cell.failed or 0 for _, _, cell in stream_cells)
    processed = sum(cell.processed or 0 for _, _, cell in stream_cells)
    errors = sum(cell.errors for _, _, cell in stream_cells)
    runs = sum(cell.runs for _, _, cell in stream_cells)
    rows.append(("failed transactions, every run of the streaming targets",
                 f"{failed:,} failed of {processed:,} transactions in {runs} runs"
                 + (f"; {errors} runs with errors" if errors else ""),
                 "**met** (0 failed)" if runs and failed == 0 and errors == 0 else ("not measured" if not runs else "missed")))
    for n in ("stream", "stream_noryw", "pgpool_stream"):
        if n not in names or tmap[n]["skip"]:
            continue
        per = defaultdict(int)
        for (t, w, c), p in spread.items():
            if t == n and w in ("select", "select_prep"):
                for node, v in p.items():
                    per[node] += v
        total = sum(per.values())
        if not total:
            rows.append((f"select-only reads on the standbys: {tmap[n]['label']}", "–", "not measured"))
            continue
        standbys = {node: v for node, v in per.items() if roles.get((n, node)) == "standby"}
        on_standbys = sum(standbys.values()) / total
        even = len(standbys) >= 2 and min(standbys.values()) / total >= 0.25
        rows.append((f"select-only reads on the standbys: {tmap[n]['label']}",
                     f"{100 * on_standbys:.1f}% of {total:,} reads on the standbys; "
                     + ", ".join(f"node {node} {100 * v / total:.0f}%" for node, v in sorted(per.items())),
                     "**met**" if on_standbys >= 0.99 and even else "missed"))
    for n in names:
        chs = [ch for k, v in check_by.items() if k[0] == n for ch in v]
        if not chs:
            continue
        bad = [ch for ch in chs if ch["verdict"] != "identical"]
        waits = [float(m.group(1)) for ch in chs for m in [re.search(r"caught up in ([0-9.]+) s", ch["detail"])] if m]
        rows.append((f"primary and standbys identical after TPC-B: {tmap[n]['label']}",
                     f"{len(chs) - len(bad)} of {len(chs)} checks identical"
                     + (f"; standbys caught up within {max(waits):.1f} s of the run's end" if waits else ""),
                     "**met**" if not bad else "missed"))
    o("| Check | Measured | Verdict |\n|---|---|---|")
    for r in rows:
        o("| " + " | ".join(r) + " |")
    o("")

    # --- per workload: transactions, failed, and where the reads went ---
    o("Per run type, summed over the rounds: transactions pgbench processed, failed transactions "
      "(pgbench's `number of failed transactions`), and reads per node by the proxy's own counters "
      "(pgmulti's `SHOW NODES` column `reads` in its admin console, pgpool-II's `SHOW POOL_NODES` column "
      "`select_cnt`), read before and after each run. pgpool-II counts the SELECTs of TPC-B (on the "
      "primary) too; pgmulti counts as reads only what it routes as one (not statements in a transaction "
      "block: in TPC-B only pgbench's opening `select count(*) from pgbench_branches`).\n")
    o("<details><summary>Transactions, failed transactions and reads per node, per workload, client "
      "count and target</summary>\n")
    o("| Workload | Clients | Target | Transactions | Failed | Reads per node (node role: reads, share) |")
    o("|---|---:|---|---:|---:|---|")
    shown = names + [n for n in ("repl_sync", "pgpool") if n in tmap]
    for w in workloads:
        for c in clients:
            for n in shown:
                cell = cells.get((n, w, c))
                if cell is None or (n not in names and w not in STREAM_READ_WORKLOADS):
                    continue
                sp = spread_text(n, w, c)
                fail = "–" if cell.failed is None else f"{cell.failed:,}"
                if cell.errors:
                    fail += f" ({cell.errors} of {cell.runs} runs with errors)"
                o(f"| {WORKLOAD_LABEL.get(w, w)} | {c} | {tmap[n]['label']} | {fnum(cell.processed)} | {fail} | {sp} |")
    o("\n</details>\n")


def write_svg(path, targets, clients, get, meta):
    W, H = 820, 460
    left, right, top, bottom = 80, 300, 50, 60
    pw, ph = W - left - right, H - top - bottom
    series = []
    for t in targets:
        if t["skip"] or "select" not in t["workloads"]:
            continue
        pts = [(cc, get(t["name"], cc)) for cc in clients]
        pts = [(cc, v) for cc, v in pts if v is not None]
        if pts:
            series.append((t["label"], pts))
    ymax = max([v for _, pts in series for _, v in pts] + [1.0])
    # A round axis maximum.
    step = 10 ** max(0, len(str(int(ymax))) - 1)
    ymax = (int(ymax * 1.08 / step) + 1) * step
    colors = ["#222222", "#1f77b4", "#6baed6", "#ff7f0e", "#2ca02c", "#98df8a", "#d62728", "#9467bd", "#8c564b"]
    n = max(len(clients), 1)

    def x(i):
        return left + (pw * (i + 0.5) / n)

    def y(v):
        return top + ph - ph * v / ymax

    s = []
    a = s.append
    a(f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
      'font-family="sans-serif" font-size="12">')
    a(f'<rect width="{W}" height="{H}" fill="white"/>')
    a(f'<text x="{left}" y="24" font-size="15" font-weight="bold">pgbench select-only (-M simple): '
      'median TPS by clients</text>')
    a(f'<text x="{left}" y="40" fill="#555">{html.escape(meta.get("date", ""))}, {meta.get("nproc")} cores, '
      f'scale {meta.get("scale")}, {meta.get("rounds")} rounds × {meta.get("duration")} s, -j {meta.get("threads")}'
      f'{" (quick run)" if meta.get("quick") == "1" else ""}</text>')
    for k in range(6):
        v = ymax * k / 5
        yy = y(v)
        a(f'<line x1="{left}" y1="{yy:.1f}" x2="{left + pw}" y2="{yy:.1f}" stroke="#ddd"/>')
        a(f'<text x="{left - 8}" y="{yy + 4:.1f}" text-anchor="end">{int(v):,}</text>')
    a(f'<line x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}" stroke="#333"/>')
    a(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + ph}" stroke="#333"/>')
    for i, cc in enumerate(clients):
        a(f'<text x="{x(i):.1f}" y="{top + ph + 18}" text-anchor="middle">{cc}</text>')
    a(f'<text x="{left + pw / 2:.1f}" y="{H - 16}" text-anchor="middle">clients (pgbench -c)</text>')
    a(f'<text transform="translate(18,{top + ph / 2:.1f}) rotate(-90)" text-anchor="middle">transactions per second</text>')
    for k, (label, pts) in enumerate(series):
        col = colors[k % len(colors)]
        coords = [(x(clients.index(cc)), y(v)) for cc, v in pts]
        dash = ' stroke-dasharray="6,4"' if "trace" in label else ""
        a(f'<polyline fill="none" stroke="{col}" stroke-width="2"{dash} points="'
          + " ".join(f"{px:.1f},{py:.1f}" for px, py in coords) + '"/>')
        for (px, py), (cc, v) in zip(coords, pts):
            a(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3.5" fill="{col}"><title>{html.escape(label)}, '
              f'{cc} clients: {v:,.0f} tps</title></circle>')
        ly = top + 10 + k * 20
        a(f'<line x1="{left + pw + 20}" y1="{ly}" x2="{left + pw + 44}" y2="{ly}" stroke="{col}" stroke-width="2"{dash}/>')
        a(f'<text x="{left + pw + 50}" y="{ly + 4}">{html.escape(label)}</text>')
    a("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(s) + "\n")


if __name__ == "__main__":
    main()
