//! How deeply a query may nest: every walk over a parsed query recurses
//! (ours in `infer.rs`, sqlparser's `Visit`, `Display` and even dropping the
//! tree), and a stack overflow is not a panic: it aborts the whole process.
//! So a query is refused with `SchemaError::TooDeep` before any of that
//! can run out of stack. Three bounds, each checked while walking:
//!
//! 1. Before parsing, over the tokens: sqlparser bounds its own recursion
//!    (bound 2), but builds operator chains (`1+1+…`, `a AND b AND …`,
//!    `x IS NULL IS NULL…`), `UNION` chains and `PIVOT` chains in a loop, as
//!    a tree one level deeper per operator. Such a tree can be too deep even
//!    to drop, and the parser drops what it built when it then meets an
//!    error, so it must not be built at all. A loop-built chain cannot cross
//!    a comma, a bracket or a `CASE` branch at its own level, so the tokens
//!    since the last of those, summed over the open brackets and `CASE`s,
//!    bound how deep the tree can be ([`MAX_RUN_TOKENS`]).
//! 2. While parsing: sqlparser's recursion limit ([`PARSER_DEPTH`]), which
//!    bounds brackets, function calls, `CASE`, subqueries and CTEs.
//! 3. After parsing, over the tree: the nesting of expressions, queries,
//!    set operations and table factors ([`MAX_DEPTH`]), which bounds every
//!    later walk.
//!
//! The numbers: in a debug build one level of an operator chain costs about
//! 2.2 KB of stack to `Visit`, a few KB to `infer.rs`, 0.1 KB to drop; a
//! release build a tenth of that. Stacks are 2 MiB (tokio workers, test
//! threads). [`MAX_DEPTH`] = 256 keeps the deepest accepted query well inside
//! half of that in a debug build (a test runs them on 1 MiB), and is far
//! beyond hand-written SQL; [`MAX_RUN_TOKENS`] = 4096 keeps a refused tree
//! cheap to drop (overflow starts at about 20,000 levels) while no sane
//! query has that many tokens without a comma or bracket.

use std::ops::ControlFlow;

use sqlparser::ast::{Expr, Query, SetExpr, Statement, TableFactor, Visit, Visitor};
use sqlparser::dialect::MsSqlDialect;
use sqlparser::keywords::Keyword;
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::{Token, Tokenizer};

use super::SchemaError;

/// The most levels of expressions, subqueries, set operations and table
/// factors a query may nest.
pub const MAX_DEPTH: usize = 256;

/// sqlparser's recursion limit (its default, set here so it stays known).
pub const PARSER_DEPTH: usize = 50;

/// The most tokens between two commas, brackets or `CASE` branches, summed
/// over the enclosing ones.
const MAX_RUN_TOKENS: usize = 4096;

/// The stack every parse and walk runs on (see the module notes).
pub const STACK_BYTES: usize = 32 << 20;

/// Runs `work` on a thread of its own with a [`STACK_BYTES`] stack, so that
/// what it may use does not depend on the caller's thread; on the caller's
/// thread if no thread can be started.
pub(super) fn on_own_stack<T: Send>(work: impl FnOnce() -> T + Send) -> T {
    let work = std::sync::Mutex::new(Some(work));
    let take = || work.lock().unwrap_or_else(|e| e.into_inner()).take();
    std::thread::scope(|scope| {
        let spawned = std::thread::Builder::new()
            .name("sql-analysis".into())
            .stack_size(STACK_BYTES)
            .spawn_scoped(scope, || take().map(|work| work()));
        let done = match spawned {
            Ok(thread) => thread.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            Err(_) => None,
        };
        match done {
            Some(out) => out,
            None => take().expect("the work ran or is still here")(),
        }
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

/// Tokens since the last comma (or branch) at one bracket or `CASE` level.
struct Level {
    opened: Opened,
    run: usize,
    /// `UNION`s and the like: a comma does not end their chain.
    sets: usize,
}

impl Level {
    fn new(opened: Opened) -> Self {
        Self {
            opened,
            run: 0,
            sets: 0,
        }
    }

    fn weight(&self) -> usize {
        self.run + self.sets
    }
}

/// Bound 1 (see the module notes). Only ever over-counts: anything it is
/// unsure of counts as one more level.
fn check_tokens(dialect: &MsSqlDialect, sql: &str) -> Result<(), SchemaError> {
    // A text that does not tokenize does not parse either; the parser says why.
    let Ok(tokens) = Tokenizer::new(dialect, sql).tokenize() else {
        return Ok(());
    };
    let mut levels = vec![Level::new(Opened::Bracket)];
    // The weight of every level but the innermost.
    let mut below = 0;
    for token in &tokens {
        let outermost = levels.len() == 1;
        let top = levels.last_mut().expect("the outermost level stays");
        let opens = match token {
            Token::Whitespace(_) | Token::EOF => continue,
            Token::LParen | Token::LBracket | Token::LBrace => Some(Opened::Bracket),
            Token::Word(w) if w.keyword == Keyword::CASE => Some(Opened::Case),
            _ => None,
        };
        let closes = match token {
            Token::RParen | Token::RBracket | Token::RBrace => top.opened == Opened::Bracket,
            Token::Word(w) if w.keyword == Keyword::END => top.opened == Opened::Case,
            _ => false,
        };
        if let Some(opened) = opens {
            top.run += 1;
            below += top.weight();
            levels.push(Level::new(opened));
        } else if closes && !outermost {
            levels.pop();
            below -= levels.last().map_or(0, Level::weight);
        } else {
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
        if below + levels.last().map_or(0, Level::weight) > MAX_RUN_TOKENS {
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
