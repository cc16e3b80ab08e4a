//! `CHECK CONSISTENCY [db]`: whether every node holds the same data. For each user table
//! (plain tables and partitions; partitioned parents hold no rows) and each sequence, every
//! node computes a row count and an order-independent checksum of all rows in one pass
//! inside PostgreSQL — no row ever leaves the node — and the nodes are compared object by
//! object.
//!
//! All nodes read in snapshots taken while no transaction ran (see `check`), so a check
//! under load compares the same transactions everywhere.
//!
//! Blocking I/O: one thread per node, each with its own `Direct` connections. `check` must run
//! in a thread of its own, never in the event loop. `judge` (the comparison and the verdict)
//! does no I/O.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use crate::cluster::direct::{Direct, Rows};
use crate::net::tls::NodeTls;

/// A node to check.
pub struct Target {
    pub id: u8,
    pub host: String,
    pub addr: SocketAddr,
}

/// How the check logs in to the nodes (`health_check_user` and its password).
pub struct Login {
    pub user: String,
    pub password: Option<String>,
    pub tls: NodeTls,
}

/// What one node found for one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub database: String,
    /// `schema.name` as PostgreSQL's `quote_ident` writes it (quoted only when needed).
    pub object: String,
    /// `"table"` or `"sequence"`; `"database"` (with an empty object) for a node that could
    /// not be checked in a database where no other node found any object either.
    pub kind: &'static str,
    pub node: u8,
    /// Row count (tables only).
    pub rows: Option<i64>,
    /// Tables: the sum of the rows' 64-bit hashes. Sequences: `last_value=… is_called=…`.
    pub checksum: Option<String>,
    /// `same`, `DIFFERS`, `missing` or `error: …`.
    pub status: String,
}

pub struct Report {
    /// Sorted by database, object, node.
    pub lines: Vec<Line>,
    pub consistent: bool,
    /// One line: `consistent: …` or `NOT consistent: …`.
    pub verdict: String,
}

const TABLE: &str = "table";
const SEQUENCE: &str = "sequence";

/// The problems a verdict names before it only counts the rest.
const VERDICT_ITEMS: usize = 10;

/// How long one query may keep a node silent. One pass over a table takes seconds per GB,
/// so only a node that hangs takes this long.
const QUERY_TIMEOUT: Duration = Duration::from_secs(3600);

/// First of all (alone, so that a short `statement_timeout` of the role or database cannot
/// cut the session set-up short either): no time limit on a long pass.
const NO_STATEMENT_TIMEOUT: &str = "SET statement_timeout = 0";

/// The session every connection starts with: a row reads the same (its text is what is
/// hashed) whatever each node's or database's defaults for these settings; read-only.
const SESSION: &str = "SET application_name = 'pgmulti CHECK CONSISTENCY'; \
     SET default_transaction_read_only = on; SET search_path = pg_catalog; \
     SET TimeZone = 'UTC'; SET DateStyle = 'ISO, MDY'; SET IntervalStyle = 'postgres'; \
     SET extra_float_digits = 1; SET bytea_output = 'hex'; SET lc_monetary = 'C'";

const DATABASES: &str = "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate";

/// Where the list of databases is read: `postgres`, or `template1` where there is no
/// `postgres` (as psql -l and pg_dumpall do).
const LIST_FROM: [&str; 2] = ["postgres", "template1"];

/// Plain tables and partitions (`r`) and sequences (`S`) outside the system schemas.
const OBJECTS: &str = "SELECT n.nspname, c.relname, c.relkind, \
     quote_ident(n.nspname) || '.' || quote_ident(c.relname) \
     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE c.relkind IN ('r', 'S') \
     AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
     AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'";

/// Check every table and sequence of `database` (else of every database the first target
/// that answers — the lead — lists) on every target.
///
/// First, one node after the other, a connection per node and database opens a REPEATABLE
/// READ transaction (its snapshot), lists the objects and reads the sequences (they are not
/// transactional); then `aligned` is called. The caller holds new transactions back until
/// then (see `reactor::operations`), so every node's snapshot shows the same transactions.
/// The tables are then measured in those snapshots, the nodes in parallel, while clients
/// write again.
pub fn check(
    targets: &[Target],
    login: &Login,
    database: Option<&str>,
    aligned: &mut dyn FnMut(),
) -> Report {
    let databases = match database {
        Some(d) => vec![d.to_string()],
        None => match list_databases(targets, login) {
            Ok(d) => d,
            Err(failures) => {
                aligned();
                return unlisted(&failures);
            }
        },
    };
    let mut opened: Vec<Vec<Opened>> = targets
        .iter()
        .map(|t| databases.iter().map(|db| begin(t, login, db)).collect())
        .collect();
    aligned();
    let scans: Vec<Vec<Scan>> = std::thread::scope(|s| {
        let threads: Vec<_> = opened
            .iter_mut()
            .zip(targets)
            .map(|(node, t)| {
                std::thread::Builder::new()
                    .name(format!("consistency-{}", t.id))
                    .spawn_scoped(s, move || node.iter_mut().map(measure_tables).collect())
                    .map_err(|e| e.to_string())
            })
            .collect();
        threads
            .into_iter()
            .map(|t| {
                let scans = t.and_then(|t| {
                    t.join()
                        .map_err(|_| "the check of this node stopped unexpectedly".to_string())
                });
                scans.unwrap_or_else(|e| vec![Err(e); databases.len()])
            })
            .collect()
    });
    let mut per_node: Vec<_> = scans.into_iter().map(Vec::into_iter).collect();
    let found: Vec<Database> = databases
        .into_iter()
        .map(|name| Database {
            scans: targets
                .iter()
                .zip(per_node.iter_mut())
                .map(|(t, scans)| (t.id, scans.next().unwrap_or(Err("not checked".into()))))
                .collect(),
            name,
        })
        .collect();
    judge(targets.len(), &found)
}

// ---------------------------------------------------------------------------------------------
// The comparison (no I/O).
// ---------------------------------------------------------------------------------------------

/// Row count and checksum of one object on one node.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Measure {
    rows: Option<i64>,
    checksum: String,
}

/// What a node found for one object: its kind, and its measure or why it has none.
#[derive(Debug, Clone)]
struct Finding {
    kind: &'static str,
    measure: Result<Measure, String>,
}

/// One node in one database: its findings by object, or why it could not be checked there.
type Scan = Result<BTreeMap<String, Finding>, String>;

/// Every node's scan of one database.
struct Database {
    name: String,
    scans: Vec<(u8, Scan)>,
}

/// How one node stands for one object.
enum Seen<'a> {
    Found(&'a Finding),
    Missing,
    Unreachable(&'a str),
}

/// Compare the nodes object by object: per object, the nodes agreeing with the largest group
/// (ties: the group of the lowest node id, the lead) are `same`, the others `DIFFERS`.
fn judge(node_count: usize, databases: &[Database]) -> Report {
    let mut lines = Vec::new();
    // (node, message) -> databases where that node could not be checked at all.
    let mut unreachable: BTreeMap<(u8, &str), Vec<&str>> = BTreeMap::new();
    let mut problems = Vec::new();
    let (mut tables, mut sequences) = (0, 0);
    for db in databases {
        let mut scans: Vec<&(u8, Scan)> = db.scans.iter().collect();
        scans.sort_by_key(|(node, _)| *node);
        let objects: BTreeSet<&String> = scans
            .iter()
            .filter_map(|(_, scan)| scan.as_ref().ok())
            .flat_map(|found| found.keys())
            .collect();
        for (node, scan) in &scans {
            let Err(e) = scan else { continue };
            unreachable.entry((*node, e)).or_default().push(&db.name);
            if objects.is_empty() {
                lines.push(Line {
                    database: db.name.clone(),
                    object: String::new(),
                    kind: "database",
                    node: *node,
                    rows: None,
                    checksum: None,
                    status: format!("error: {e}"),
                });
            }
        }
        for object in objects {
            let seen: Vec<(u8, Seen)> = scans
                .iter()
                .map(|(node, scan)| {
                    let seen = match scan {
                        Err(e) => Seen::Unreachable(e),
                        Ok(found) => found.get(object).map_or(Seen::Missing, Seen::Found),
                    };
                    (*node, seen)
                })
                .collect();
            let kind = judge_object(&db.name, object, &seen, &mut lines, &mut problems);
            if kind == SEQUENCE {
                sequences += 1;
            } else {
                tables += 1;
            }
        }
    }
    let mut items: Vec<String> = unreachable
        .iter()
        .map(|((node, e), dbs)| format!("node {node} cannot be checked ({}): {e}", dbs.join(", ")))
        .collect();
    items.append(&mut problems);
    lines.sort_by(|a, b| (&a.database, &a.object, a.node).cmp(&(&b.database, &b.object, b.node)));
    let consistent = items.is_empty() && node_count > 0;
    let verdict = if node_count == 0 {
        "NOT consistent: no node to check".to_string()
    } else if consistent {
        format!(
            "consistent: {} ({}, {} in {})",
            match node_count {
                1 => "1 node checked".to_string(),
                n => format!("{n} nodes identical"),
            },
            counted(tables, "table"),
            counted(sequences, "sequence"),
            counted(databases.len(), "database")
        )
    } else {
        let more = items.len().saturating_sub(VERDICT_ITEMS);
        items.truncate(VERDICT_ITEMS);
        if more > 0 {
            items.push(format!("and {more} more"));
        }
        format!("NOT consistent: {}", items.join("; "))
    };
    Report {
        lines,
        consistent,
        verdict,
    }
}

/// One line per node for `object`; its problems (not those of unreachable nodes, which the
/// verdict names once) go to `problems`. Returns the object's kind.
fn judge_object(
    database: &str,
    object: &str,
    seen: &[(u8, Seen)],
    lines: &mut Vec<Line>,
    problems: &mut Vec<String>,
) -> &'static str {
    // Groups of equal findings, in the order of their lowest node.
    let mut groups: Vec<((&str, &Measure), Vec<u8>)> = Vec::new();
    for (node, s) in seen {
        if let Seen::Found(Finding {
            kind,
            measure: Ok(m),
        }) = s
        {
            match groups.iter_mut().find(|(key, _)| *key == (*kind, m)) {
                Some((_, nodes)) => nodes.push(*node),
                None => groups.push(((*kind, m), vec![*node])),
            }
        }
    }
    let reference = groups
        .iter()
        .enumerate()
        .max_by_key(|(i, (_, nodes))| (nodes.len(), Reverse(*i)))
        .map(|(_, (key, _))| *key);
    let object_kind = reference.map(|(kind, _)| kind).unwrap_or_else(|| {
        seen.iter()
            .find_map(|(_, s)| match s {
                Seen::Found(f) => Some(f.kind),
                _ => None,
            })
            .unwrap_or(TABLE)
    });
    let (mut differs, mut missing) = (Vec::new(), Vec::new());
    for (node, s) in seen {
        let (kind, measure, status) = match s {
            Seen::Found(f) => match &f.measure {
                Ok(m) if reference == Some((f.kind, m)) => (f.kind, Some(m), "same".to_string()),
                Ok(m) => {
                    differs.push(*node);
                    (f.kind, Some(m), "DIFFERS".to_string())
                }
                Err(e) => {
                    problems.push(format!("{object} failed on node {node} ({database}): {e}"));
                    (f.kind, None, format!("error: {e}"))
                }
            },
            Seen::Missing => {
                missing.push(*node);
                (object_kind, None, "missing".to_string())
            }
            Seen::Unreachable(e) => (object_kind, None, format!("error: {e}")),
        };
        lines.push(Line {
            database: database.to_string(),
            object: object.to_string(),
            kind,
            node: *node,
            rows: measure.and_then(|m| m.rows),
            checksum: measure.map(|m| m.checksum.clone()),
            status,
        });
    }
    if !differs.is_empty() {
        problems.push(format!(
            "{object} differs on {} ({database})",
            nodes(&differs)
        ));
    }
    if !missing.is_empty() {
        problems.push(format!(
            "{object} missing on {} ({database})",
            nodes(&missing)
        ));
    }
    object_kind
}

/// The report when not even the list of databases could be read.
fn unlisted(failures: &[(u8, String)]) -> Report {
    let lines = failures
        .iter()
        .map(|(node, e)| Line {
            database: String::new(),
            object: String::new(),
            kind: "database",
            node: *node,
            rows: None,
            checksum: None,
            status: format!("error: {e}"),
        })
        .collect();
    let why: Vec<String> = failures
        .iter()
        .map(|(node, e)| format!("node {node}: {e}"))
        .collect();
    Report {
        lines,
        consistent: false,
        verdict: if why.is_empty() {
            "NOT consistent: no node to check".into()
        } else {
            format!(
                "NOT consistent: no node could list its databases ({})",
                why.join("; ")
            )
        },
    }
}

/// `node 2` or `nodes 1, 2`.
fn nodes(ids: &[u8]) -> String {
    let list: Vec<String> = ids.iter().map(u8::to_string).collect();
    match ids.len() {
        1 => format!("node {}", list[0]),
        _ => format!("nodes {}", list.join(", ")),
    }
}

/// `1 table`, `3 tables`.
fn counted(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// `"schema"."name"`, embedded double quotes doubled.
fn qualified_name(schema: &str, name: &str) -> String {
    let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    format!("{}.{}", quote(schema), quote(name))
}

/// Row count and checksum of a table in one pass: the sum of a 64-bit hash of each row's text
/// (`sum(bigint)` is numeric: it never overflows). `hashtextextended` is 2–3 times faster
/// than an md5 of the row and gives the same value on every node of the same byte order.
/// `(t.*)` is the whole row even when the table has a column named `t`; `ONLY` leaves out
/// inheritance children (checked on their own).
fn table_sql(schema: &str, name: &str) -> String {
    format!(
        "SELECT count(*), coalesce(sum(hashtextextended((t.*)::text, 0)), 0) FROM ONLY {} AS t",
        qualified_name(schema, name)
    )
}

fn sequence_sql(schema: &str, name: &str) -> String {
    format!(
        "SELECT last_value, is_called FROM {}",
        qualified_name(schema, name)
    )
}

// ---------------------------------------------------------------------------------------------
// The scan of one node (blocking I/O, in the node's thread).
// ---------------------------------------------------------------------------------------------

/// A table or sequence as a node lists it.
struct Object {
    schema: String,
    name: String,
    kind: &'static str,
    /// `quote_ident(schema).quote_ident(name)`, the key objects are compared by.
    display: String,
}

fn open(target: &Target, login: &Login, database: &str) -> Result<Direct, String> {
    let mut c = Direct::connect(
        target.addr,
        &target.host,
        &login.user,
        login.password.as_deref(),
        database,
        &login.tls,
    )?;
    c.set_read_timeout(Some(QUERY_TIMEOUT))?;
    c.query(NO_STATEMENT_TIMEOUT)?;
    c.query(SESSION)?;
    Ok(c)
}

/// The databases to check, sorted, as the first target that answers lists them; else what
/// each target answered.
fn list_databases(targets: &[Target], login: &Login) -> Result<Vec<String>, Vec<(u8, String)>> {
    let mut failures = Vec::new();
    for t in targets {
        let listed = open(t, login, LIST_FROM[0])
            .or_else(|e| {
                // 3D000 invalid_catalog_name: no such database.
                if e.starts_with("3D000") {
                    open(t, login, LIST_FROM[1])
                } else {
                    Err(e)
                }
            })
            .and_then(|mut c| c.query(DATABASES));
        match listed {
            Ok(rows) => {
                let mut names: Vec<String> = rows
                    .into_iter()
                    .filter_map(|row| row.into_iter().next().flatten())
                    .collect();
                names.sort();
                return Ok(names);
            }
            Err(e) => failures.push((t.id, e)),
        }
    }
    Err(failures)
}

/// One node's connection to one database inside its snapshot, the objects it lists, and
/// what was measured before the snapshots were aligned (the sequences).
struct Opened {
    conn: Result<Direct, String>,
    objects: Vec<Object>,
    found: BTreeMap<String, Finding>,
}

/// Open the snapshot, list the objects, read the sequences.
fn begin(target: &Target, login: &Login, database: &str) -> Opened {
    let mut opened = Opened {
        conn: Err(String::new()),
        objects: Vec::new(),
        found: BTreeMap::new(),
    };
    let listed = open(target, login, database).and_then(|mut c| {
        c.query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")?;
        let objects = list_objects(&mut c)?;
        Ok((c, objects))
    });
    let (conn, objects) = match listed {
        Ok(x) => x,
        Err(e) => {
            opened.conn = Err(e);
            return opened;
        }
    };
    opened.conn = Ok(conn);
    for object in objects {
        if object.kind == SEQUENCE {
            let m = measure_one(&mut opened.conn, &object);
            opened.found.insert(object.display.clone(), m);
        } else {
            opened.objects.push(object);
        }
    }
    opened
}

/// Every table of one database in the snapshot `begin` opened; with the sequences, every
/// object in (schema, name) order.
fn measure_tables(opened: &mut Opened) -> Scan {
    if let Err(e) = &opened.conn {
        return Err(e.clone());
    }
    for object in std::mem::take(&mut opened.objects) {
        let m = measure_one(&mut opened.conn, &object);
        opened.found.insert(object.display, m);
    }
    Ok(std::mem::take(&mut opened.found))
}

/// One object, inside a savepoint: a failure (no privilege, a lock timeout) leaves the
/// transaction and its snapshot usable for the next object. A connection that fails is
/// not used again.
fn measure_one(conn: &mut Result<Direct, String>, object: &Object) -> Finding {
    let measured = match conn.as_mut() {
        Err(e) => Err(format!("connection lost: {e}")),
        Ok(c) => c.query("SAVEPOINT pgmulti_check").and_then(|_| {
            let m = measure(c, object);
            let end = if m.is_ok() {
                "RELEASE SAVEPOINT pgmulti_check"
            } else {
                "ROLLBACK TO SAVEPOINT pgmulti_check"
            };
            c.query(end).map(|_| m)
        }),
    };
    let measure = match measured {
        Ok(m) => m,
        Err(e) => {
            *conn = Err(e.clone());
            Err(e)
        }
    };
    Finding {
        kind: object.kind,
        measure,
    }
}

fn list_objects(c: &mut Direct) -> Result<Vec<Object>, String> {
    let mut objects = c
        .query(OBJECTS)?
        .into_iter()
        .map(|row| match <[Option<String>; 4]>::try_from(row) {
            Ok([Some(schema), Some(name), Some(kind), Some(display)]) => Ok(Object {
                kind: if kind == "S" { SEQUENCE } else { TABLE },
                schema,
                name,
                display,
            }),
            _ => Err("unexpected answer listing tables".to_string()),
        })
        .collect::<Result<Vec<_>, _>>()?;
    objects.sort_by(|a, b| (&a.schema, &a.name).cmp(&(&b.schema, &b.name)));
    Ok(objects)
}

fn measure(c: &mut Direct, o: &Object) -> Result<Measure, String> {
    if o.kind == SEQUENCE {
        let (last_value, is_called) = two_values(c.query(&sequence_sql(&o.schema, &o.name))?)?;
        return Ok(Measure {
            rows: None,
            checksum: format!("last_value={last_value} is_called={is_called}"),
        });
    }
    let (count, checksum) = two_values(c.query(&table_sql(&o.schema, &o.name))?)?;
    let rows = count
        .parse()
        .map_err(|_| format!("unexpected row count {count:?}"))?;
    Ok(Measure {
        rows: Some(rows),
        checksum,
    })
}

/// The two columns of a one-row result.
fn two_values(rows: Rows) -> Result<(String, String), String> {
    match rows.into_iter().next().map(<[Option<String>; 2]>::try_from) {
        Some(Ok([Some(a), Some(b)])) => Ok((a, b)),
        _ => Err("unexpected answer".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(rows: i64, checksum: &str) -> Finding {
        Finding {
            kind: TABLE,
            measure: Ok(Measure {
                rows: Some(rows),
                checksum: checksum.into(),
            }),
        }
    }

    fn sequence(last: i64) -> Finding {
        Finding {
            kind: SEQUENCE,
            measure: Ok(Measure {
                rows: None,
                checksum: format!("last_value={last} is_called=t"),
            }),
        }
    }

    fn failed(e: &str) -> Finding {
        Finding {
            kind: TABLE,
            measure: Err(e.into()),
        }
    }

    fn scan(objects: &[(&str, Finding)]) -> Scan {
        Ok(objects
            .iter()
            .map(|(name, f)| (name.to_string(), f.clone()))
            .collect())
    }

    fn db(name: &str, scans: Vec<(u8, Scan)>) -> Database {
        Database {
            name: name.into(),
            scans,
        }
    }

    fn status<'a>(r: &'a Report, object: &str, node: u8) -> &'a str {
        r.lines
            .iter()
            .find(|l| l.object == object && l.node == node)
            .map_or("no line", |l| l.status.as_str())
    }

    #[test]
    fn identical_nodes_are_consistent() {
        let objects = [
            ("public.t", table(3, "42")),
            ("public.t_id_seq", sequence(3)),
        ];
        let r = judge(
            3,
            &[
                db("app", (0..3).map(|n| (n, scan(&objects))).collect()),
                db("other", (0..3).map(|n| (n, scan(&objects[..1]))).collect()),
            ],
        );
        assert!(r.consistent);
        assert_eq!(
            r.verdict,
            "consistent: 3 nodes identical (2 tables, 1 sequence in 2 databases)"
        );
        assert_eq!(r.lines.len(), 9);
        assert!(r.lines.iter().all(|l| l.status == "same"));
        let seq = r.lines.iter().find(|l| l.kind == SEQUENCE).unwrap();
        assert_eq!(
            (seq.rows, seq.checksum.as_deref()),
            (None, Some("last_value=3 is_called=t"))
        );
    }

    #[test]
    fn the_largest_group_is_the_reference() {
        let r = judge(
            3,
            &[db(
                "app",
                vec![
                    (2, scan(&[("public.t", table(3, "42"))])),
                    (0, scan(&[("public.t", table(3, "41"))])),
                    (1, scan(&[("public.t", table(3, "42"))])),
                ],
            )],
        );
        assert!(!r.consistent);
        assert_eq!(status(&r, "public.t", 0), "DIFFERS", "the lead is outvoted");
        assert_eq!(status(&r, "public.t", 1), "same");
        assert_eq!(
            r.verdict,
            "NOT consistent: public.t differs on node 0 (app)"
        );
        let nodes: Vec<u8> = r.lines.iter().map(|l| l.node).collect();
        assert_eq!(nodes, vec![0, 1, 2], "lines are sorted by node");
    }

    #[test]
    fn a_tie_goes_to_the_lead() {
        let r = judge(
            2,
            &[db(
                "app",
                vec![
                    (1, scan(&[("public.t", table(4, "42"))])),
                    (0, scan(&[("public.t", table(3, "42"))])),
                ],
            )],
        );
        assert_eq!(status(&r, "public.t", 0), "same");
        assert_eq!(status(&r, "public.t", 1), "DIFFERS");
        let lead = &r.lines[0];
        assert_eq!((lead.rows, lead.checksum.as_deref()), (Some(3), Some("42")));
    }

    #[test]
    fn missing_objects_and_failed_queries() {
        let r = judge(
            3,
            &[db(
                "app",
                vec![
                    (0, scan(&[("public.u", table(1, "7"))])),
                    (
                        1,
                        scan(&[("public.t", table(3, "42")), ("public.u", table(1, "7"))]),
                    ),
                    (
                        2,
                        scan(&[
                            ("public.t", table(3, "42")),
                            ("public.u", failed("42501 permission denied")),
                        ]),
                    ),
                ],
            )],
        );
        assert!(!r.consistent);
        assert_eq!(status(&r, "public.t", 0), "missing");
        assert_eq!(status(&r, "public.u", 2), "error: 42501 permission denied");
        assert_eq!(
            r.verdict,
            "NOT consistent: public.t missing on node 0 (app); \
             public.u failed on node 2 (app): 42501 permission denied"
        );
        let missing = r.lines.iter().find(|l| l.status == "missing").unwrap();
        assert_eq!((missing.kind, missing.rows), (TABLE, None));
    }

    #[test]
    fn an_unreachable_node_is_an_error_everywhere() {
        let objects = [("public.t", table(3, "42")), ("public.s", sequence(1))];
        let down: Scan = Err("127.0.0.1:5433: Connection refused".into());
        let r = judge(
            3,
            &[
                db(
                    "app",
                    vec![(0, scan(&objects)), (1, down.clone()), (2, scan(&objects))],
                ),
                db(
                    "empty",
                    vec![(0, scan(&[])), (1, down.clone()), (2, scan(&[]))],
                ),
            ],
        );
        assert!(!r.consistent);
        assert_eq!(
            r.verdict,
            "NOT consistent: node 1 cannot be checked (app, empty): 127.0.0.1:5433: Connection refused"
        );
        let node1: Vec<&Line> = r.lines.iter().filter(|l| l.node == 1).collect();
        assert_eq!(
            node1.len(),
            3,
            "one line per object, one for the empty database"
        );
        assert!(node1
            .iter()
            .all(|l| l.status.starts_with("error: 127.0.0.1:5433")));
        assert_eq!(node1[0].kind, SEQUENCE, "kind taken from the other nodes");
        assert_eq!(
            (node1[2].database.as_str(), node1[2].kind),
            ("empty", "database")
        );
    }

    #[test]
    fn the_verdict_names_ten_problems_then_counts() {
        let lead: Vec<(String, Finding)> = (0..12)
            .map(|i| (format!("public.t{i:02}"), table(1, "1")))
            .collect();
        let other: Vec<(String, Finding)> = (0..12)
            .map(|i| (format!("public.t{i:02}"), table(1, "2")))
            .collect();
        let as_scan = |v: &[(String, Finding)]| -> Scan { Ok(v.iter().cloned().collect()) };
        let r = judge(
            2,
            &[db("app", vec![(0, as_scan(&lead)), (1, as_scan(&other))])],
        );
        assert!(r
            .verdict
            .starts_with("NOT consistent: public.t00 differs on node 1 (app); "));
        assert!(
            r.verdict
                .ends_with("public.t09 differs on node 1 (app); and 2 more"),
            "{}",
            r.verdict
        );
    }

    #[test]
    fn several_nodes_differ() {
        let r = judge(
            4,
            &[db(
                "app",
                vec![
                    (0, scan(&[("public.t", table(3, "1"))])),
                    (1, scan(&[("public.t", table(3, "2"))])),
                    (2, scan(&[("public.t", table(3, "2"))])),
                    (3, scan(&[("public.t", sequence(3))])),
                ],
            )],
        );
        assert_eq!(
            r.verdict,
            "NOT consistent: public.t differs on nodes 0, 3 (app)"
        );
    }

    #[test]
    fn no_nodes_is_not_consistent() {
        let r = judge(0, &[]);
        assert!(!r.consistent);
        assert_eq!(r.verdict, "NOT consistent: no node to check");
        let r = unlisted(&[(0, "refused".into())]);
        assert!(!r.consistent);
        assert_eq!(
            r.verdict,
            "NOT consistent: no node could list its databases (node 0: refused)"
        );
    }

    #[test]
    fn names_are_quoted() {
        assert_eq!(qualified_name("public", "t"), r#""public"."t""#);
        assert_eq!(
            qualified_name("My Schema", r#"we"ird"#),
            r#""My Schema"."we""ird""#
        );
        assert_eq!(
            table_sql("s", "t"),
            r#"SELECT count(*), coalesce(sum(hashtextextended((t.*)::text, 0)), 0) FROM ONLY "s"."t" AS t"#
        );
        assert_eq!(
            sequence_sql("s", "q"),
            r#"SELECT last_value, is_called FROM "s"."q""#
        );
    }
}
