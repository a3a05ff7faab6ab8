//! Deep or wide SQL ends in an answer (a result or `TooDeep`), never in a
//! stack overflow: an overflow is not a panic, it aborts the whole worker.
//! These run on the default test thread stack (2 MiB, like a tokio worker),
//! and the largest accepted shapes also on half of it.

use proptest::prelude::*;

use super::*;

fn too_deep<T: std::fmt::Debug>(result: Result<T, SchemaError>) -> bool {
    match result {
        Err(e @ SchemaError::TooDeep(_)) => {
            let text = e.to_string();
            assert!(text.starts_with("The query is nested too deeply to analyse"), "{text}");
            assert!(!text.contains("+1"), "the message must not echo the SQL: {text}");
            true
        }
        other => panic!("expected TooDeep, got {other:?}"),
    }
}

/// `SELECT 1+1+…+1 AS x FROM X` with `terms` ones.
fn plus_chain(terms: usize) -> String {
    format!("SELECT 1{} AS x FROM X", "+1".repeat(terms - 1))
}

#[test]
fn a_6000_term_sum_is_refused_not_a_crash() {
    let sql = plus_chain(6000);
    assert!(sql.len() > 12_000);
    assert!(too_deep(analyse(&sql, &catalog())));
    assert!(too_deep(referenced_tables(&sql)));
    let fields = [field("x", Number, true, true)];
    for mode in [TargetMode::Overwrite, TargetMode::Append] {
        let problems = check_target(&sql, &[], "T", "K", &fields, mode);
        assert!(!problems.is_empty(), "{mode:?}");
    }
    let problems = check_target(&sql, &[], "T", "K", &fields, TargetMode::Overwrite);
    assert!(
        problems[0].starts_with("The query is nested too deeply"),
        "{problems:?}"
    );
}

#[test]
fn the_largest_accepted_query_text_is_refused_not_a_crash_even_when_it_does_not_parse() {
    // 256 KB of `+1`: a chain far deeper than dropping the tree can survive,
    // so it must be refused before the parser builds it; also when the
    // parser would fail after building it.
    let terms = crate::message::MAX_SQL_BYTES / 2;
    for sql in [
        plus_chain(terms),
        format!("SELECT 1{} AS x FROM", "+1".repeat(terms)),
        format!("SELECT 1{}", " IS NULL".repeat(terms / 8)),
        format!("SELECT 1 AS x{}", " UNION SELECT 1".repeat(terms / 16)),
        format!("SELECT 1 AS x; SELECT 1{}", "+1".repeat(terms)),
        format!("SELECT x FROM t{}", " PIVOT (SUM(a) FOR b IN (c)) p".repeat(terms / 32)),
        format!("SELECT {}1 AS x", "(".repeat(terms)),
        format!("SELECT {}1{} AS x", "(".repeat(terms / 2), ")".repeat(terms / 2)),
    ] {
        assert!(too_deep(analyse(&sql, &catalog())));
        assert!(too_deep(referenced_tables(&sql)));
    }
}

#[test]
fn long_flat_lists_stay_fine() {
    // Width is not depth: long IN lists, select lists, CASE branches, joins,
    // CTE chains and commas everywhere are accepted.
    let list = (0..5000).map(|i| i.to_string()).collect::<Vec<_>>().join(", ");
    let sql = format!("SELECT Email FROM Subscribers_DE WHERE Age IN ({list})");
    check(&sql, &[("Email", EmailAddress, Some(254))]);
    let columns = (0..2000)
        .map(|i| format!("Age + {i} AS c{i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let analysis = analyse(&format!("SELECT {columns} FROM Subscribers_DE"), &catalog()).unwrap();
    assert_eq!(analysis.fields.len(), 2000);
    let branches: String = (0..3000).map(|i| format!(" WHEN Age = {i} THEN 'v{i}'")).collect();
    check(
        &format!("SELECT CASE{branches} ELSE 'none' END AS v FROM Subscribers_DE"),
        &[("v", Text, Some(254))],
    );
    let joins: String = (0..300)
        .map(|i| format!(" JOIN Orders o{i} ON o{i}.Email = s.Email"))
        .collect();
    check(
        &format!("SELECT s.Age FROM Subscribers_DE s{joins}"),
        &[("Age", Number, None)],
    );
    let ctes = (1..500)
        .map(|i| format!("c{i} AS (SELECT Age FROM c{})", i - 1))
        .collect::<Vec<_>>()
        .join(", ");
    check(
        &format!("WITH c0 AS (SELECT Age FROM Subscribers_DE), {ctes} SELECT * FROM c499"),
        &[("Age", Number, None)],
    );
    assert_eq!(
        referenced_tables(&format!(
            "WITH c0 AS (SELECT Age FROM Subscribers_DE), {ctes} SELECT * FROM c499"
        ))
        .unwrap(),
        ["Subscribers_DE"]
    );
}

#[test]
fn chains_up_to_the_limit_are_analysed_beyond_it_refused() {
    // `SELECT` item, then one level per operator.
    let ok = plus_chain(MAX_DEPTH - 1);
    check(&ok, &[("x", Number, None)]);
    assert_eq!(referenced_tables(&ok).unwrap(), ["X"]);
    assert!(too_deep(analyse(&plus_chain(MAX_DEPTH + 2), &catalog())));
    assert!(too_deep(referenced_tables(&plus_chain(MAX_DEPTH + 2))));
}

/// One way of nesting an expression `inner`, `depth` times.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Plus,
    Concat,
    AndOr,
    Parens,
    CaseElse,
    CaseWhen,
    Function,
    Scalar,
    In,
    Exists,
    Derived,
    DerivedStar,
    Union,
    NestedCte,
    ChainedCte,
    Unary,
}

const KINDS: [Kind; 16] = [
    Kind::Plus,
    Kind::Concat,
    Kind::AndOr,
    Kind::Parens,
    Kind::CaseElse,
    Kind::CaseWhen,
    Kind::Function,
    Kind::Scalar,
    Kind::In,
    Kind::Exists,
    Kind::Derived,
    Kind::DerivedStar,
    Kind::Union,
    Kind::NestedCte,
    Kind::ChainedCte,
    Kind::Unary,
];

fn wrap(kind: Kind, depth: usize, inner: &str) -> String {
    let mut e = inner.to_string();
    match kind {
        Kind::Plus => e.push_str(&" + 1".repeat(depth)),
        Kind::Concat => e.push_str(&" + 'a'".repeat(depth)),
        Kind::AndOr => {
            let chain: String = (0..depth)
                .map(|i| if i % 2 == 0 { " AND 1 = 1" } else { " OR Age > 1" })
                .collect();
            e = format!("CASE WHEN 1 = 1{chain} THEN {e} END");
        }
        Kind::Parens => e = format!("{}{e}{}", "(".repeat(depth), ")".repeat(depth)),
        Kind::CaseElse => {
            e = format!(
                "{}{e}{}",
                "CASE WHEN Age > 1 THEN 1 ELSE ".repeat(depth),
                " END".repeat(depth)
            )
        }
        Kind::CaseWhen => e = format!("{}{e}{}", "CASE WHEN Age > 1 THEN ".repeat(depth), " END".repeat(depth)),
        Kind::Function => e = format!("{}{e}{}", "ISNULL(".repeat(depth), ", 0)".repeat(depth)),
        Kind::Scalar => e = format!("{}{e}{}", "(SELECT ".repeat(depth), " AS y)".repeat(depth)),
        Kind::In => {
            e = format!(
                "(SELECT {e} AS y FROM Orders WHERE OrderID IN {}1{})",
                "(SELECT OrderID FROM Orders WHERE OrderID IN ".repeat(depth),
                ")".repeat(depth)
            )
        }
        Kind::Exists => {
            e = format!(
                "(SELECT {e} AS y FROM Orders WHERE {}1 = 1{})",
                "EXISTS (SELECT 1 FROM Orders WHERE ".repeat(depth),
                ")".repeat(depth)
            )
        }
        Kind::Derived => {
            e = format!(
                "(SELECT y FROM {}(SELECT {e} AS y) d{})",
                "(SELECT y FROM ".repeat(depth),
                ") d".repeat(depth)
            )
        }
        Kind::DerivedStar => {
            e = format!(
                "(SELECT * FROM {}(SELECT {e} AS y) d{})",
                "(SELECT * FROM ".repeat(depth),
                ") d".repeat(depth)
            )
        }
        Kind::Union => e = format!("(SELECT {e} AS y{})", " UNION SELECT 1".repeat(depth)),
        Kind::NestedCte => {
            e = format!(
                "({}SELECT {e} AS y{})",
                "WITH c AS (".repeat(depth),
                ") SELECT y FROM c".repeat(depth)
            )
        }
        Kind::ChainedCte => {
            let ctes: String = (1..=depth)
                .map(|i| format!(", c{i} AS (SELECT y FROM c{})", i - 1))
                .collect();
            e = format!("(WITH c0 AS (SELECT {e} AS y){ctes} SELECT y FROM c{depth})");
        }
        Kind::Unary => e = format!("{}{e}", "- ".repeat(depth)),
    }
    e
}

fn depth() -> impl Strategy<Value = usize> {
    prop_oneof![4 => 0usize..20, 3 => 20usize..400, 2 => 400usize..6000]
}

fn layers() -> impl Strategy<Value = Vec<(Kind, usize)>> {
    prop::collection::vec((prop::sample::select(KINDS.to_vec()), depth()), 1..4)
}

/// The query: the layered expression under one of a few outer shapes.
fn query(layers: &[(Kind, usize)], outer: usize) -> String {
    let e = layers.iter().fold("Age".to_string(), |e, (k, d)| wrap(*k, *d, &e));
    match outer {
        0 => format!("SELECT {e} AS x FROM Subscribers_DE"),
        1 => format!("SELECT * FROM (SELECT {e} AS x FROM Subscribers_DE) t"),
        2 => format!("SELECT Email FROM Subscribers_DE WHERE Age IN (SELECT {e} AS x FROM Orders)"),
        _ => format!("WITH w AS (SELECT {e} AS x FROM Subscribers_DE) SELECT * FROM w UNION ALL SELECT 1"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn any_nesting_ends_in_an_answer(layers in layers(), outer in 0usize..4) {
        let sql = query(&layers, outer);
        let analysis = analyse(&sql, &catalog());
        let tables = referenced_tables(&sql);
        let fields = [field("x", Number, true, true)];
        let columns = analysis.as_ref().map(|a| a.columns.clone()).unwrap_or_default();
        for mode in [TargetMode::Overwrite, TargetMode::Append, TargetMode::Update] {
            check_target(&sql, &columns, "Target", "TKEY", &fields, mode);
        }
        // Only depth is refused, and then by both.
        if let Err(e) = &analysis {
            prop_assert!(matches!(e, SchemaError::TooDeep(_)), "{e}");
            prop_assert!(matches!(tables, Err(SchemaError::TooDeep(_))), "{tables:?}");
        }
        // Shallow nesting is analysed as before.
        let total: usize = layers.iter().map(|(_, d)| d).sum();
        if total < 20 {
            prop_assert!(analysis.is_ok(), "{sql}: {analysis:?}");
            prop_assert!(tables.is_ok(), "{sql}: {tables:?}");
        }
    }
}

#[test]
fn every_kind_at_every_depth() {
    // The proptest samples; this sweeps each kind alone at set depths.
    for kind in KINDS {
        for depth in [0, 5, 19, 60, 250, 1000, 5000] {
            for outer in 0..4 {
                let sql = query(&[(kind, depth)], outer);
                let analysis = analyse(&sql, &catalog());
                let tables = referenced_tables(&sql);
                if depth < 20 {
                    assert!(analysis.is_ok(), "{kind:?} {depth} {outer}: {analysis:?}");
                    assert!(tables.is_ok(), "{kind:?} {depth} {outer}: {tables:?}");
                } else if let Err(e) = analysis {
                    assert!(matches!(e, SchemaError::TooDeep(_)), "{kind:?} {depth}: {e}");
                }
            }
        }
    }
}

/// The deepest shapes that are still accepted, run on half the default
/// stack: the limits leave at least that much room.
#[test]
fn the_deepest_accepted_queries_fit_in_half_the_stack() {
    let deepest: Vec<String> = KINDS
        .iter()
        .flat_map(|&kind| {
            let mut best = None;
            for depth in (0..=MAX_DEPTH).rev() {
                let sql = query(&[(kind, depth)], 0);
                if analyse(&sql, &catalog()).is_ok() {
                    best = Some(sql);
                    break;
                }
            }
            best
        })
        .collect();
    assert_eq!(deepest.len(), KINDS.len());
    std::thread::Builder::new()
        .stack_size(1024 * 1024)
        .spawn(move || {
            for sql in &deepest {
                analyse(sql, &catalog()).unwrap();
                referenced_tables(sql).unwrap();
                let fields = [field("x", Number, true, true)];
                check_target(sql, &[], "Target", "TKEY", &fields, TargetMode::Overwrite);
            }
        })
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn zz_probe_env() {
    let Ok(spec) = std::env::var("PROBE") else { return };
    let parts: Vec<&str> = spec.split(',').collect();
    let kind = KINDS[parts[0].parse::<usize>().unwrap()];
    let depth: usize = parts[1].parse().unwrap();
    let outer: usize = parts[2].parse().unwrap();
    let kib: usize = parts[3].parse().unwrap();
    let what = parts[4].to_string();
    let sql = query(&[(kind, depth)], outer);
    std::thread::Builder::new()
        .stack_size(kib * 1024)
        .spawn(move || match what.as_str() {
            "a" => {
                let r = analyse(&sql, &catalog());
                println!("RESULT {:?}", r.map(|_| ()).map_err(|e| e.to_string()));
            }
            "t" => {
                let r = referenced_tables(&sql);
                println!("RESULT {:?}", r.map(|_| ()).map_err(|e| e.to_string()));
            }
            _ => {
                let r = depth_probe_parse(&sql);
                println!("RESULT {:?}", r);
            }
        })
        .unwrap()
        .join()
        .unwrap();
}
fn depth_probe_parse(sql: &str) -> Result<(), String> {
    crate::schema::depth::parse(sql).map(|_| ()).map_err(|e| e.to_string())
}
