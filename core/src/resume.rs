//! An unconfirmed Perform: an earlier execute delivery sent (or was about
//! to send) Perform and never learnt its TaskID (MCE failed to answer, or
//! the worker died). Whether a second Perform is harmless is decided here,
//! in the poll decision's shape: [`decide`] either asks MCE one
//! [`Question`] (the caller records the answer in [`Facts`] and asks again)
//! or gives the [`Resume`] to carry out. No I/O.
//!
//! - The query is running, or the run's own temp DE already holds rows: it
//!   started; the run is polled without a TaskID.
//! - It is not running and the destination makes a second Perform harmless
//!   (the run's own temp DE, which only this run writes, or a target in
//!   `Overwrite` or `Update` mode, which writes the same rows again):
//!   Perform again.
//! - A target in `Append` mode (or a mode no one knows) is never performed
//!   twice: a second Perform could add every row again.

use crate::schema::TargetMode;

/// What is known about the run so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Facts {
    /// The run writes into its own temp DE.
    pub temp_de: bool,
    /// The target's mode, as the row holds it (`None`: not a mode).
    pub mode: Option<TargetMode>,
    /// MCE's isRunning answer for the run's QueryDefinition, once asked.
    pub running: Option<bool>,
    /// Whether the temp DE holds rows, once asked.
    pub has_rows: Option<bool>,
}

impl Facts {
    pub fn new(temp_de: bool, mode: Option<TargetMode>) -> Self {
        Self {
            temp_de,
            mode,
            running: None,
            has_rows: None,
        }
    }
}

/// What to ask MCE next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Question {
    /// REST isRunning on the QueryDefinition.
    IsRunning,
    /// One row of the temp DE.
    HasRows,
}

/// What to do with the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resume {
    Ask(Question),
    /// It started: poll it without a TaskID.
    Poll,
    /// A second Perform is harmless: send it.
    PerformAgain,
    /// A second Perform could duplicate rows: fail the run, saying so.
    Refuse,
}

/// Whether a second Perform is harmless for a destination: the run's own
/// temp DE, or a target in `Overwrite` or `Update` mode.
pub fn second_perform_harmless(temp_de: bool, mode: Option<TargetMode>) -> bool {
    temp_de || matches!(mode, Some(TargetMode::Overwrite | TargetMode::Update))
}

/// The next step for a run whose Perform was not confirmed.
pub fn decide(facts: &Facts) -> Resume {
    match facts.running {
        None => return Resume::Ask(Question::IsRunning),
        Some(true) => return Resume::Poll,
        Some(false) => {}
    }
    if facts.temp_de {
        match facts.has_rows {
            None => return Resume::Ask(Question::HasRows),
            Some(true) => return Resume::Poll,
            Some(false) => {}
        }
    }
    if second_perform_harmless(facts.temp_de, facts.mode) {
        Resume::PerformAgain
    } else {
        Resume::Refuse
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `decide` to its end, answering each question from `answers`;
    /// the questions asked, and the outcome.
    fn walk(mut facts: Facts, running: bool, has_rows: bool) -> (Vec<Question>, Resume) {
        let mut asked = Vec::new();
        loop {
            match decide(&facts) {
                Resume::Ask(q) => {
                    asked.push(q);
                    match q {
                        Question::IsRunning => facts.running = Some(running),
                        Question::HasRows => facts.has_rows = Some(has_rows),
                    }
                }
                done => return (asked, done),
            }
        }
    }

    #[test]
    fn a_running_query_is_polled_whatever_its_destination() {
        for (temp, mode) in [(true, None), (false, Some(TargetMode::Append)), (false, None)] {
            let (asked, done) = walk(Facts::new(temp, mode), true, false);
            assert_eq!(asked, [Question::IsRunning], "no rows asked once it runs");
            assert_eq!(done, Resume::Poll);
        }
    }

    #[test]
    fn a_temp_de_with_rows_is_polled_and_one_without_is_performed_again() {
        assert_eq!(
            walk(Facts::new(true, None), false, true),
            (vec![Question::IsRunning, Question::HasRows], Resume::Poll)
        );
        assert_eq!(
            walk(Facts::new(true, None), false, false),
            (vec![Question::IsRunning, Question::HasRows], Resume::PerformAgain)
        );
    }

    #[test]
    fn a_target_is_performed_again_only_when_that_cannot_duplicate_rows() {
        for (mode, expected) in [
            (Some(TargetMode::Overwrite), Resume::PerformAgain),
            (Some(TargetMode::Update), Resume::PerformAgain),
            (Some(TargetMode::Append), Resume::Refuse),
            (None, Resume::Refuse),
        ] {
            let (asked, done) = walk(Facts::new(false, mode), false, true);
            assert_eq!(
                asked,
                [Question::IsRunning],
                "a target's rows say nothing: never probed"
            );
            assert_eq!(done, expected, "{mode:?}");
        }
    }

    #[test]
    fn harmless_means_temp_overwrite_or_update() {
        assert!(second_perform_harmless(true, Some(TargetMode::Append)));
        assert!(second_perform_harmless(false, Some(TargetMode::Overwrite)));
        assert!(second_perform_harmless(false, Some(TargetMode::Update)));
        assert!(!second_perform_harmless(false, Some(TargetMode::Append)));
        assert!(!second_perform_harmless(false, None));
    }
}
