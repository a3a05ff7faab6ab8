//! Deep or wide SQL ends in an answer (a result or `TooDeep`), never in a
//! stack overflow: an overflow is not a panic, it aborts the whole process.
//! These call the API from the default test thread (2 MiB, like a tokio
//! worker) and from a smaller one; the deepest accepted queries also run on
//! the caller's stack, a quarter of the analysis's own.

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
    assert_eq!(
        analyse(&sql, &catalog()).unwrap_err().to_string(),
        "The query is nested too deeply to analyse (more than 1000 levels of expressions or subqueries). \
         Please simplify it."
    );
    // Overwrite cannot be checked against the tables it reads: refused, as
    // for any query that does not parse; Append checks the given columns.
    let fields = [field("x", Number, true, true)];
    let problems = check_target(&sql, &[], "T", "K", &fields, TargetMode::Overwrite);
    assert!(
        problems[0].starts_with("Cannot safely verify overwrite behavior"),
        "{problems:?}"
    );
    assert!(check_target(&sql, &[], "T", "K", &fields, TargetMode::Append).len() > 1);
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
        format!("SELECT {}1 AS x", "- ".repeat(terms / 2)),
        format!("SELECT 1 AS x FROM t WHERE {}1 = 1", "NOT ".repeat(terms / 4)),
        format!("SELECT {}1 AS x", "CASE WHEN 1 = 1 THEN ".repeat(terms / 16)),
        format!(
            "SELECT 1 AS x FROM t WHERE a IS DISTINCT FROM b{}",
            " IS DISTINCT FROM b".repeat(terms / 20)
        ),
    ] {
        assert!(too_deep(analyse(&sql, &catalog())));
        assert!(too_deep(referenced_tables(&sql)));
    }
    // Nonsense of that size: any error, but an answer.
    for sql in [
        format!("SELECT 1 AS x {}", ")".repeat(terms)),
        format!("SELECT 1 AS x {}", "END ".repeat(terms / 4)),
        format!("SELECT {}1 AS x", "a.".repeat(terms / 2)),
        format!("SELECT 1 AS x FROM t WHERE {}", "+".repeat(terms)),
        format!("SELECT '{}", "+1".repeat(terms)),
    ] {
        assert!(analyse(&sql, &catalog()).is_err());
        assert!(referenced_tables(&sql).is_err());
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
                "(SELECT {e} AS y FROM Orders WHERE OrderID IN {}(1){})",
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
        _ => format!("WITH w AS (SELECT {e} AS x FROM Subscribers_DE) SELECT * FROM w UNION ALL SELECT 1 AS x"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

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
        for (depth, outers) in [(0, 4), (5, 4), (19, 4), (51, 4), (250, 4), (1001, 2), (5000, 1)] {
            for outer in 0..outers {
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

/// The largest `depth` (up to `most`) at which `sql(depth)` is still
/// analysed; refusal only ever starts deeper.
fn deepest(most: usize, sql: impl Fn(usize) -> String) -> usize {
    let accepted = |d: usize| analyse(&sql(d), &catalog()).is_ok();
    assert!(accepted(0), "{}", sql(0));
    let (mut yes, mut no) = (0, most + 1);
    while no - yes > 1 {
        let mid = (yes + no) / 2;
        if accepted(mid) { yes = mid } else { no = mid }
    }
    yes
}

/// The deepest accepted shapes of every kind, alone and (for those that
/// nest brackets) with the longest operator or prefix chain inside, need
/// less than a quarter of the own stack, and the caller's stack does not
/// matter.
#[test]
fn the_deepest_accepted_queries_fit_in_a_quarter_of_the_stack() {
    let mut sqls = Vec::new();
    for kind in KINDS {
        // Star expansion over derived tables: the outer shape that nests most.
        let d = deepest(MAX_DEPTH, |d| query(&[(kind, d)], 1));
        assert!(d >= 19, "{kind:?}: {d}");
        sqls.push(query(&[(kind, d)], 1));
        if d < MAX_NESTING {
            for (inside, least) in [(Kind::Plus, MAX_DEPTH / 2), (Kind::Unary, MAX_NESTING / 2)] {
                let n = deepest(MAX_DEPTH, |n| query(&[(inside, n), (kind, d)], 1));
                assert!(n > least, "{kind:?} {d} with {inside:?} {n}");
                sqls.push(query(&[(inside, n), (kind, d)], 1));
            }
        }
    }
    let sqls = std::sync::Arc::new(sqls);
    let run = |stack: usize, work: fn(&str)| {
        let sqls = sqls.clone();
        std::thread::Builder::new()
            .stack_size(stack)
            .spawn(move || sqls.iter().for_each(|sql| work(sql)))
            .unwrap()
            .join()
            .unwrap();
    };
    // On the caller's stack, a quarter of the own one.
    run(crate::schema::depth::STACK_BYTES / 4, |sql| {
        analyse_here(sql, &catalog()).unwrap();
        tables_here(sql).unwrap();
    });
    // Through the API, from a caller with a small stack.
    run(256 * 1024, |sql| {
        analyse(sql, &catalog()).unwrap();
        referenced_tables(sql).unwrap();
        let fields = [field("x", Number, true, true)];
        check_target(sql, &[], "Target", "TKEY", &fields, TargetMode::Overwrite);
    });
}
