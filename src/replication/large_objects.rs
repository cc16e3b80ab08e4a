//! Large objects in replication mode, as clients reach them through the fast-path
//! FunctionCall message (libpq's `lo_*`, JDBC's LargeObjectManager).
//!
//! Every large-object function changes or moves something on the node (`loread` and
//! `lo_lseek` move the descriptor's position), so a call runs on every node like a write, and
//! the nodes' descriptors stay in step. The one value a node would choose itself is the OID
//! of a new object: `lo_creat(mode)`, `lo_create(0)`, `lo_from_bytea(0, …)` and the one-
//! argument `lo_import(path)` are sent as the same call with an OID pgmulti chose, in
//! 2^31..2^32-1 (above the OIDs a node hands out until it has made two billion objects). If
//! that OID is taken the node refuses the call and the client may simply retry. Any other
//! function is refused: pgmulti cannot tell what it does.

use crate::protocol::frontend::{self, parse_function_call};

const LO_CREATE: u32 = 715;
const LO_IMPORT: u32 = 764;
const LO_IMPORT_WITH_OID: u32 = 767;
const LO_CREAT: u32 = 957;
const LO_FROM_BYTEA: u32 = 3457;

/// The functions of the large-object interface (pg_proc OIDs, fixed in every PostgreSQL).
const LARGE_OBJECT_FUNCTIONS: &[u32] = &[
    LO_CREATE,
    LO_IMPORT,
    765,
    LO_IMPORT_WITH_OID,
    952,
    953,
    954,
    955,
    956,
    LO_CREAT,
    958,
    964,
    1004,
    3170,
    3171,
    3172,
    LO_FROM_BYTEA,
    3458,
    3459,
    3460,
];

/// What to do with a FunctionCall (`body` without tag and length).
#[derive(Debug, PartialEq, Eq)]
pub enum Call {
    /// Send it to every node as it is.
    AsIs,
    /// Send this FunctionCall instead: the same with the OID pgmulti chose.
    Rewritten(Vec<u8>),
    /// Not a large-object function (or not a well-formed message): refused with this text.
    Refused(String),
}

/// An OID for a new large object, from a random number.
pub fn new_oid(random: u64) -> u32 {
    (1 << 31) | (random as u32 & 0x7fff_fffe)
}

/// Decide about a FunctionCall; `oid` is the OID a new object gets.
pub fn function_call(body: &[u8], oid: u32) -> Call {
    let Ok(call) = parse_function_call(body) else {
        return Call::Refused("invalid FunctionCall message".into());
    };
    if !LARGE_OBJECT_FUNCTIONS.contains(&call.oid) {
        return Call::Refused(format!(
            "function {} cannot be called through the function call protocol in replication mode: only large-object functions can",
            call.oid
        ));
    }
    let args: Vec<Option<&[u8]>> = call.args.iter().collect();
    let formats: Vec<i16> = call.arg_formats.iter().collect();
    let binary = |i: usize| match formats.len() {
        0 => false,
        1 => formats[0] == 1,
        _ => formats.get(i) == Some(&1),
    };
    // Whether argument `i` is the OID 0 ("the node chooses").
    let zero = |i: usize| match args.get(i).copied().flatten() {
        Some(v) if binary(i) => v == [0, 0, 0, 0],
        Some(v) => std::str::from_utf8(v).is_ok_and(|t| t.trim() == "0"),
        None => false,
    };
    let chosen = oid.to_be_bytes();
    let rewrite = |function: u32, new_args: Vec<(i16, Option<&[u8]>)>| {
        let formats: Vec<i16> = new_args.iter().map(|(f, _)| *f).collect();
        let values: Vec<Option<&[u8]>> = new_args.iter().map(|(_, v)| *v).collect();
        let mut out = Vec::new();
        frontend::function_call_message(&mut out, function, &formats, &values, call.result_format);
        Call::Rewritten(out)
    };
    let format_of = |i: usize| i16::from(binary(i));
    match call.oid {
        LO_CREAT if args.len() == 1 => rewrite(LO_CREATE, vec![(1, Some(&chosen))]),
        LO_CREATE if args.len() == 1 && zero(0) => rewrite(LO_CREATE, vec![(1, Some(&chosen))]),
        LO_FROM_BYTEA if args.len() == 2 && zero(0) => rewrite(
            LO_FROM_BYTEA,
            vec![(1, Some(&chosen)), (format_of(1), args[1])],
        ),
        LO_IMPORT if args.len() == 1 => rewrite(
            LO_IMPORT_WITH_OID,
            vec![(format_of(0), args[0]), (1, Some(&chosen))],
        ),
        LO_IMPORT_WITH_OID if args.len() == 2 && zero(1) => rewrite(
            LO_IMPORT_WITH_OID,
            vec![(format_of(0), args[0]), (1, Some(&chosen))],
        ),
        _ => Call::AsIs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(oid: u32, formats: &[i16], args: &[Option<&[u8]>]) -> Vec<u8> {
        let mut m = Vec::new();
        frontend::function_call_message(&mut m, oid, formats, args, 1);
        m[5..].to_vec()
    }

    fn args_of(msg: &[u8]) -> (u32, Vec<i16>, Vec<Option<Vec<u8>>>) {
        let c = parse_function_call(&msg[5..]).unwrap();
        (
            c.oid,
            c.arg_formats.iter().collect(),
            c.args.iter().map(|a| a.map(<[u8]>::to_vec)).collect(),
        )
    }

    #[test]
    fn a_new_object_gets_the_oid_pgmulti_chose() {
        let oid = new_oid(0x1234_5678_9abc_def1);
        assert!(oid >= 1 << 31 && oid != u32::MAX);
        let chosen = oid.to_be_bytes().to_vec();
        // libpq's lo_creat(INV_READ | INV_WRITE), an int4 in binary.
        let Call::Rewritten(m) = function_call(&body(957, &[1], &[Some(&[0, 6, 0, 0])]), oid)
        else {
            panic!("lo_creat kept its node-chosen OID");
        };
        assert_eq!(args_of(&m), (715, vec![1], vec![Some(chosen.clone())]));
        // lo_create(0) in text; lo_create(42) stays.
        assert!(matches!(
            function_call(&body(715, &[0], &[Some(b"0")]), oid),
            Call::Rewritten(_)
        ));
        assert_eq!(
            function_call(&body(715, &[1], &[Some(&[0, 0, 0, 42])]), oid),
            Call::AsIs
        );
        let Call::Rewritten(m) = function_call(&body(764, &[0], &[Some(b"/tmp/x")]), oid) else {
            panic!("lo_import(path)");
        };
        assert_eq!(
            args_of(&m),
            (
                767,
                vec![0, 1],
                vec![Some(b"/tmp/x".to_vec()), Some(chosen)]
            )
        );
    }

    #[test]
    fn other_functions_are_refused_and_the_rest_go_as_they_are() {
        assert_eq!(
            function_call(
                &body(954, &[1], &[Some(&[0, 0, 0, 0]), Some(&[0, 0, 1, 0])]),
                1
            ),
            Call::AsIs
        );
        assert!(matches!(
            function_call(&body(1598, &[], &[]), 1), // random()
            Call::Refused(m) if m.contains("1598")
        ));
        assert!(matches!(function_call(b"\x00\x00", 1), Call::Refused(_)));
    }
}
