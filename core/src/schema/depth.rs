//! How deeply a query may nest. Every walk over a parsed query recurses
//! (sqlparser's parser, `Visit`, `Display` and even dropping the tree, and
//! ours in `infer.rs`), and a stack overflow is not a panic: it aborts the
//! whole process. So the parse and every walk run on a thread of their own
//! with a known stack ([`STACK_BYTES`]), and a query that nests deeper than
//! these bounds is refused with `SchemaError::TooDeep`, found while walking
//! the tokens or the tree, before anything can recurse further:
//!
//! 1. Before parsing, over the tokens. sqlparser bounds its own recursion
//!    (bound 2) but builds operator chains (`1+1+…`, `a AND b AND …`,
//!    `x IS NULL IS NULL…`), `UNION` chains and `PIVOT` chains in a loop, as
//!    a tree one level deeper per operator: 256 KB of `+1` is 130,000
//!    levels, too deep even to drop, and the parser drops what it built when
//!    it then meets an error. So such a tree must not be built. A loop-built
//!    chain cannot cross a comma, a bracket or a `CASE` branch at its own
//!    level, so the tokens since the last of those, summed over the open
//!    brackets and `CASE`s, bound how deep it can get ([`MAX_RUN_TOKENS`]).
//!    Brackets, `CASE`s and prefix operators, each a level of the parser's
//!    recursion, nest at most [`MAX_NESTING`] deep.
//! 2. While parsing: sqlparser's recursion limit ([`PARSER_DEPTH`]), a
//!    safety net that bound 1 keeps out of reach.
//! 3. After parsing, over the tree ([`MAX_DEPTH`]): the nesting of
//!    expressions, queries, set operations and table factors, counted while
//!    walking and stopped at the limit. Every later walk follows that nesting
//!    (printing it is avoided: `Display` takes about 10 KB a level).
//!
//! Measured stack use, debug build (release needs four to ten times less):
//! the parser takes 30 KB per nested prefix operator and 40-210 KB per
//! nested bracket, `CASE` or subquery; a level of an operator chain costs
//! about 2 KB to parse, check, analyse and drop. The deepest accepted
//! queries (50 nested derived tables with 50 prefix operators inside) need
//! about 11 MB, 2.5 MB in release: more than the 2 MiB of a tokio worker or
//! a test thread, hence the own stack, which leaves five times that (a test
//! runs them on a quarter of it). The limits are far beyond hand-written
//! SQL, and [`MAX_NESTING`] is what sqlparser allowed before (its default
//! recursion limit, 50, stopped at 20 to 50 levels, depending on the kind).

use std::ops::ControlFlow;

use sqlparser::ast::{Expr, Query, SetExpr, Statement, TableFactor, Visit, Visitor};
use sqlparser::dialect::MsSqlDialect;
use sqlparser::keywords::Keyword;
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::{Token, Tokenizer};

use super::SchemaError;

/// The most levels of expressions, subqueries, set operations and table
/// factors a query may nest (bound 3).
pub const MAX_DEPTH: usize = 1000;

/// The most brackets and `CASE`s a query may nest, and the most prefix
/// operators on the way (bound 1).
pub const MAX_NESTING: usize = 50;

/// sqlparser's recursion limit (bound 2). The parser takes one to four
/// levels per bracket and one per prefix operator, so bound 1 lets nothing
/// through that reaches it: it is a safety net (and sqlparser may report
/// reaching it as a syntax error: a `CASE` it cannot parse is tried again
/// as a column named `case`).
pub const PARSER_DEPTH: usize = 300;

/// The most tokens between two commas, brackets or `CASE` branches, summed
/// over the enclosing ones (bound 1): well above what [`MAX_DEPTH`] lets
/// through (a chain takes two to four tokens a level), and a refused tree
/// this deep takes 2 MB to drop in a debug build.
const MAX_RUN_TOKENS: usize = 16_384;

/// The stack every parse and walk runs on (see the module notes). It is
/// reserved address space: only what is used is ever touched.
pub const STACK_BYTES: usize = 64 << 20;

/// Runs `work` on a thread of its own with a [`STACK_BYTES`] stack, so that
/// what it may use does not depend on the caller's thread. If no thread can
/// be started it panics, as `std::thread::spawn` does (a handler's panic is
/// caught and its message comes back later): running on the caller's stack
/// instead could overflow it.
pub(super) fn on_own_stack<T: Send>(work: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("sql-analysis".into())
            .stack_size(STACK_BYTES)
            .spawn_scoped(scope, work)
            .expect("no thread could be started for the SQL analysis")
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Parses `sql` (MS SQL) if it nests within the bounds.
pub(super) fn parse(sql: &str) -> Result<Vec<Statement>, SchemaError> {
    let dialect = MsSqlDialect {};
    check_tokens(&dialect, sql)?;
    let statements = Parser::new(&dialect)
        .with_recursion_limit(PARSER_DEPTH)
        .try_with_sql(sql)
        .and_then(|mut parser| parser.parse_statements())
        .map_err(|e| match e {
            ParserError::RecursionLimitExceeded => SchemaError::TooDeep(PARSER_DEPTH),
            e => SchemaError::Parse(e.to_string()),
        })?;
    for statement in &statements {
        check_tree(statement)?;
    }
    Ok(statements)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Opened {
    Bracket,
    Case,
}

/// What has been seen at one bracket or `CASE` level.
struct Level {
    opened: Opened,
    /// Tokens since the last comma or `CASE` branch.
    run: usize,
    /// `UNION`s and the like: a comma does not end their chain.
    sets: usize,
    /// Prefix operators in a row just before (`- - -`, `NOT NOT`).
    prefix: usize,
}

impl Level {
    fn new(opened: Opened) -> Self {
        Self {
            opened,
            run: 0,
            sets: 0,
            prefix: 0,
        }
    }

    fn weight(&self) -> usize {
        self.run + self.sets
    }
}

/// The operators the parser nests one level deeper for each, with no
/// bracket: `- - - 1`, `NOT NOT x`.
fn prefix_operator(token: &Token) -> bool {
    match token {
        Token::Minus | Token::Plus | Token::Tilde | Token::ExclamationMark => true,
        Token::Word(w) => matches!(
            w.keyword,
            Keyword::NOT | Keyword::INTERVAL | Keyword::PRIOR | Keyword::CONNECT_BY_ROOT
        ),
        _ => false,
    }
}

/// Bound 1 (see the module notes): brackets and `CASE`s nest at most
/// [`MAX_NESTING`] deep, with at most as many prefix operators on the way;
/// and the tokens since the last comma or `CASE` branch, summed over the
/// open brackets and `CASE`s, stay under [`MAX_RUN_TOKENS`]. Only ever
/// over-counts: a closing bracket that does not match is one more token.
fn check_tokens(dialect: &MsSqlDialect, sql: &str) -> Result<(), SchemaError> {
    // A text that does not tokenize does not parse either; the parser says why.
    let Ok(tokens) = Tokenizer::new(dialect, sql).tokenize() else {
        return Ok(());
    };
    let mut levels = vec![Level::new(Opened::Bracket)];
    // Sums over every level but the innermost.
    let (mut run_below, mut prefix_below) = (0, 0);
    for token in &tokens {
        if matches!(token, Token::Whitespace(_) | Token::EOF) {
            continue;
        }
        let outermost = levels.len() == 1;
        let top = levels.last_mut().expect("the outermost level stays");
        let opens = match token {
            Token::LParen | Token::LBracket | Token::LBrace => Some(Opened::Bracket),
            Token::Word(w) if w.keyword == Keyword::CASE => Some(Opened::Case),
            _ => None,
        };
        let closes = !outermost
            && match token {
                Token::RParen | Token::RBracket | Token::RBrace => top.opened == Opened::Bracket,
                Token::Word(w) if w.keyword == Keyword::END => top.opened == Opened::Case,
                _ => false,
            };
        if let Some(opened) = opens {
            top.run += 1;
            run_below += top.weight();
            prefix_below += top.prefix;
            levels.push(Level::new(opened));
            if levels.len() > MAX_NESTING + 1 {
                return Err(SchemaError::TooDeep(MAX_NESTING));
            }
        } else if closes {
            levels.pop();
            let top = levels.last_mut().expect("the outermost level stays");
            run_below -= top.weight();
            prefix_below -= top.prefix;
            top.prefix = 0;
        } else {
            top.prefix = if prefix_operator(token) { top.prefix + 1 } else { 0 };
            match token {
                Token::Comma => top.run = 0,
                Token::SemiColon if outermost => *top = Level::new(Opened::Bracket),
                Token::Word(w)
                    if top.opened == Opened::Case
                        && matches!(w.keyword, Keyword::WHEN | Keyword::THEN | Keyword::ELSE) =>
                {
                    top.run = 0
                }
                Token::Word(w)
                    if matches!(
                        w.keyword,
                        Keyword::UNION | Keyword::EXCEPT | Keyword::INTERSECT | Keyword::MINUS
                    ) =>
                {
                    top.sets += 1
                }
                _ => top.run += 1,
            }
        }
        let top = levels.last().expect("the outermost level stays");
        if prefix_below + top.prefix > MAX_NESTING {
            return Err(SchemaError::TooDeep(MAX_NESTING));
        }
        if run_below + top.weight() > MAX_RUN_TOKENS {
            return Err(SchemaError::TooDeep(MAX_DEPTH));
        }
    }
    Ok(())
}

/// Bound 3: the nesting of expressions, queries (with their set operations)
/// and table factors, counted while walking and stopped at the limit.
fn check_tree(statement: &Statement) -> Result<(), SchemaError> {
    #[derive(Default)]
    struct Depth {
        depth: usize,
        /// What each open query added (itself and its set operations).
        queries: Vec<usize>,
    }
    impl Depth {
        fn enter(&mut self, levels: usize) -> ControlFlow<()> {
            self.depth += levels;
            if self.depth > MAX_DEPTH {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        }
    }
    impl Visitor for Depth {
        type Break = ();
        fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
            let levels = 1 + set_depth(&query.body);
            self.queries.push(levels);
            self.enter(levels)
        }
        fn post_visit_query(&mut self, _: &Query) -> ControlFlow<()> {
            self.depth -= self.queries.pop().unwrap_or(0);
            ControlFlow::Continue(())
        }
        fn pre_visit_expr(&mut self, _: &Expr) -> ControlFlow<()> {
            self.enter(1)
        }
        fn post_visit_expr(&mut self, _: &Expr) -> ControlFlow<()> {
            self.depth -= 1;
            ControlFlow::Continue(())
        }
        fn pre_visit_table_factor(&mut self, _: &TableFactor) -> ControlFlow<()> {
            self.enter(1)
        }
        fn post_visit_table_factor(&mut self, _: &TableFactor) -> ControlFlow<()> {
            self.depth -= 1;
            ControlFlow::Continue(())
        }
    }
    match statement.visit(&mut Depth::default()) {
        ControlFlow::Break(()) => Err(SchemaError::TooDeep(MAX_DEPTH)),
        ControlFlow::Continue(()) => Ok(()),
    }
}

/// How deeply set operations (`UNION`...) nest in a query body: `Visit` has
/// no hook for them, so they are counted up front, without recursion.
fn set_depth(body: &SetExpr) -> usize {
    let mut deepest = 0;
    let mut todo = vec![(body, 0)];
    while let Some((set, depth)) = todo.pop() {
        deepest = deepest.max(depth);
        if let SetExpr::SetOperation { left, right, .. } = set {
            todo.push((left, depth + 1));
            todo.push((right, depth + 1));
        }
    }
    deepest
}
