//! Table tests of the planner, and a property test that drives it with a
//! model executor (persisting as the engine does) through random sequences
//! of successes, failures, approvals, rejections, cancels, crashes and
//! concurrent puts.

use super::*;
use crate::rotation::{Gates, Outcome, Phase, Revert, RunRecord, Step};
use proptest::prelude::*;

/// A run at its first step, for tests here and elsewhere.
pub(crate) fn run() -> RunRecord {
    RunRecord {
        revision: 0,
        id: "token".into(),
        secret_id: "s".into(),
        manual: false,
        scheduled: false,
        initiator: "alice".into(),
        phase: Phase::Running,
        step: Step::Create,
        set_applied: false,
        operator_go: false,
        attempt: 0,
        next_attempt_at: None,
        approval_requested_at: None,
        current_at_start: "v1".into(),
        outcome: None,
        revert: Revert::NotNeeded,
        end_reason: String::new(),
        last_error: String::new(),
        created_at: 0,
        updated_at: 0,
        ended_at: None,
    }
}

fn gates(steps: &[Step], required: u32) -> Gates {
    Gates {
        steps: steps.to_vec(),
        required,
        role: "approver".into(),
        expiry_millis: 1000,
    }
}

fn plan_with(run: &RunRecord, gates: &Gates, approvals: &[&str], current: &str, now: i64) -> Plan {
    let approvals: Vec<String> = approvals.iter().map(|a| (*a).to_owned()).collect();
    plan(
        run,
        &Inputs {
            gates,
            approvals: &approvals,
            current_version: Some(current),
            now,
        },
    )
}

#[test]
fn decisions() {
    let none = gates(&[], 1);
    let set_gated = gates(&[Step::Set], 2);
    let at = |step: Step| RunRecord { step, ..run() };
    let manual = RunRecord {
        manual: true,
        ..run()
    };
    let requested = RunRecord {
        approval_requested_at: Some(100),
        ..at(Step::Set)
    };
    // What, the run, its gates, approvals, where CURRENT is, now, the plan.
    type Case<'a> = (
        &'a str,
        RunRecord,
        &'a Gates,
        Vec<&'a str>,
        &'a str,
        i64,
        Plan,
    );
    let cases: Vec<Case> = vec![
        (
            "automatic runs the step",
            run(),
            &none,
            vec![],
            "v1",
            0,
            Plan::Execute(Step::Create),
        ),
        (
            "manual waits for the operator",
            manual.clone(),
            &none,
            vec![],
            "v1",
            0,
            Plan::Wait(Wait::Operator(Step::Create)),
        ),
        (
            "manual runs when told",
            RunRecord {
                operator_go: true,
                ..manual
            },
            &none,
            vec![],
            "v1",
            0,
            Plan::Execute(Step::Create),
        ),
        (
            "a gate asks once",
            at(Step::Set),
            &set_gated,
            vec![],
            "v1",
            0,
            Plan::RequestApproval(Step::Set),
        ),
        (
            "then waits",
            requested.clone(),
            &set_gated,
            vec!["bob"],
            "v1",
            500,
            Plan::Wait(Wait::Approval {
                step: Step::Set,
                have: 1,
                need: 2,
            }),
        ),
        (
            "the initiator does not count",
            requested.clone(),
            &set_gated,
            vec!["bob", "alice"],
            "v1",
            500,
            Plan::Wait(Wait::Approval {
                step: Step::Set,
                have: 1,
                need: 2,
            }),
        ),
        (
            "one principal counts once",
            requested.clone(),
            &set_gated,
            vec!["bob", "bob"],
            "v1",
            500,
            Plan::Wait(Wait::Approval {
                step: Step::Set,
                have: 1,
                need: 2,
            }),
        ),
        (
            "two principals pass",
            requested.clone(),
            &set_gated,
            vec!["bob", "carol"],
            "v1",
            500,
            Plan::Execute(Step::Set),
        ),
        (
            "an expired request fails the run",
            requested.clone(),
            &set_gated,
            vec!["bob"],
            "v1",
            1101,
            Plan::BeginEnding {
                outcome: Outcome::Failed,
                reason: "the approval request for setSecret expired with 1 of 2 approvals".into(),
            },
        ),
        (
            "a moved CURRENT abandons",
            run(),
            &none,
            vec![],
            "v9",
            0,
            Plan::BeginEnding {
                outcome: Outcome::Abandoned,
                reason: "CURRENT moved to version v9 during the run".into(),
            },
        ),
        (
            "a retry waits for its time",
            RunRecord {
                next_attempt_at: Some(50),
                ..run()
            },
            &none,
            vec![],
            "v1",
            10,
            Plan::Wait(Wait::RetryAt(50)),
        ),
        (
            "a failed step waits for an operator",
            RunRecord {
                phase: Phase::StepFailed,
                ..at(Step::Test)
            },
            &none,
            vec![],
            "v1",
            0,
            Plan::Wait(Wait::StepFailed(Step::Test)),
        ),
        (
            "ending after setSecret reverts",
            RunRecord {
                phase: Phase::Ending,
                outcome: Some(Outcome::Cancelled),
                revert: Revert::Needed,
                ..run()
            },
            &none,
            vec![],
            "v1",
            0,
            Plan::Revert,
        ),
        (
            "a revert the server's own failure interrupted waits for its backoff",
            RunRecord {
                phase: Phase::Ending,
                outcome: Some(Outcome::Cancelled),
                revert: Revert::Needed,
                next_attempt_at: Some(5_000),
                ..run()
            },
            &none,
            vec![],
            "v1",
            4_999,
            Plan::Wait(Wait::RetryAt(5_000)),
        ),
        (
            "and then reverts again",
            RunRecord {
                phase: Phase::Ending,
                outcome: Some(Outcome::Cancelled),
                revert: Revert::Needed,
                next_attempt_at: Some(5_000),
                ..run()
            },
            &none,
            vec![],
            "v1",
            5_000,
            Plan::Revert,
        ),
        (
            "a failed revert needs attention",
            RunRecord {
                phase: Phase::Ending,
                outcome: Some(Outcome::Cancelled),
                revert: Revert::Failed,
                ..run()
            },
            &none,
            vec![],
            "v1",
            0,
            Plan::End(Outcome::NeedsAttention),
        ),
        (
            "ending without a revert ends",
            RunRecord {
                phase: Phase::Ending,
                outcome: Some(Outcome::Rejected),
                ..run()
            },
            &none,
            vec![],
            "v1",
            0,
            Plan::End(Outcome::Rejected),
        ),
        (
            "an ended run rests",
            RunRecord {
                phase: Phase::Ended,
                ..run()
            },
            &none,
            vec![],
            "v9",
            0,
            Plan::Wait(Wait::Ended),
        ),
    ];
    for (what, run, gates, approvals, current, now, expected) in cases {
        assert_eq!(
            plan_with(&run, gates, &approvals, current, now),
            expected,
            "{what}"
        );
    }
}

#[test]
fn failures() {
    let automatic = run();
    assert_eq!(
        after_failure(&automatic, 1, 0, 3, 100),
        AfterFailure::RetryAt(100)
    );
    assert_eq!(
        after_failure(&automatic, 2, 0, 3, 100),
        AfterFailure::RetryAt(200)
    );
    assert_eq!(
        after_failure(&automatic, 3, 0, 3, 100),
        AfterFailure::GiveUp
    );
    let manual = RunRecord {
        manual: true,
        ..run()
    };
    assert_eq!(after_failure(&manual, 1, 0, 3, 100), AfterFailure::Pause);
}

// ---- the property test --------------------------------------------------

/// The world the model executor changes: versions with values, where the
/// stages are, and what the target system holds.
#[derive(Debug, Clone)]
struct World {
    /// version id → value
    versions: Vec<(String, String)>,
    current: String,
    previous: Option<String>,
    pending: Option<String>,
    target: String,
    run: RunRecord,
    gates: Gates,
    approvals: Vec<String>,
    now: i64,
    /// The next rotator call fails.
    fail_next: bool,
    /// Gated steps executed, with the approvals counted at that moment.
    gated_executions: Vec<(Step, u32)>,
    puts: u32,
    /// Where CURRENT was when the run ended.
    current_at_end: Option<String>,
}

impl World {
    fn new(gated: Vec<Step>, required: u32, manual: bool) -> Self {
        let run = RunRecord { manual, ..run() };
        World {
            versions: vec![("v1".into(), "old".into())],
            current: "v1".into(),
            previous: None,
            pending: None,
            target: "old".into(),
            run,
            gates: Gates {
                steps: gated,
                required,
                role: "approver".into(),
                expiry_millis: 10_000,
            },
            approvals: Vec::new(),
            now: 0,
            fail_next: false,
            gated_executions: Vec::new(),
            puts: 0,
            current_at_end: None,
        }
    }

    fn value(&self, version: &str) -> Option<String> {
        self.versions
            .iter()
            .find(|(id, _)| id == version)
            .map(|(_, v)| v.clone())
    }

    fn plan(&self) -> Plan {
        plan(
            &self.run,
            &Inputs {
                gates: &self.gates,
                approvals: &self.approvals,
                current_version: Some(&self.current),
                now: self.now,
            },
        )
    }

    fn rotator_fails(&mut self) -> bool {
        std::mem::take(&mut self.fail_next)
    }

    /// One engine iteration. With `crash`, the effect happens but the
    /// persisted run does not change (the process died in between).
    fn tick(&mut self, crash: bool) {
        let plan = self.plan();
        match plan {
            Plan::Wait(_) => {}
            Plan::RequestApproval(_) => {
                if !crash {
                    self.run.approval_requested_at = Some(self.now);
                }
            }
            Plan::BeginEnding { outcome, .. } => {
                if !crash {
                    self.begin_ending(outcome);
                }
            }
            Plan::Execute(step) => {
                if self.gates.gates(step) {
                    let counted = counted_approvals(&self.run, &self.approvals);
                    self.gated_executions.push((step, counted));
                }
                // Persisted before the effect, as the engine does.
                if step == Step::Set {
                    self.run.set_applied = true;
                }
                if self.rotator_fails() && step != Step::Finish {
                    if !crash {
                        self.run.attempt += 1;
                        match after_failure(&self.run, self.run.attempt, self.now, 3, 10) {
                            AfterFailure::RetryAt(at) => self.run.next_attempt_at = Some(at),
                            AfterFailure::Pause => self.run.phase = Phase::StepFailed,
                            AfterFailure::GiveUp => self.begin_ending(Outcome::Failed),
                        }
                    }
                    return;
                }
                match step {
                    Step::Create => {
                        if self.value(&self.run.id).is_none() {
                            self.versions.push((self.run.id.clone(), "new".into()));
                        }
                        self.pending = Some(self.run.id.clone());
                    }
                    Step::Set => self.target = "new".into(),
                    Step::Test => {}
                    Step::Finish => {
                        // One transaction: CURRENT moves only if it is
                        // still where the run started.
                        if self.current != self.run.current_at_start {
                            return;
                        }
                        self.previous = Some(self.current.clone());
                        self.current = self.run.id.clone();
                        self.pending = None;
                        self.run.phase = Phase::Ended;
                        self.run.outcome = Some(Outcome::Succeeded);
                        self.current_at_end = Some(self.current.clone());
                        return;
                    }
                }
                if !crash {
                    self.run.attempt = 0;
                    self.run.next_attempt_at = None;
                    self.run.operator_go = false;
                    self.run.approval_requested_at = None;
                    self.approvals.clear();
                    self.run.step = step.next().unwrap_or(Step::Finish);
                }
            }
            Plan::Revert => {
                if self.rotator_fails() {
                    if !crash {
                        self.run.revert = Revert::Failed;
                    }
                    return;
                }
                self.target = self.value(&self.current).unwrap_or_default();
                if !crash {
                    self.run.revert = Revert::Done;
                }
                // A reverted target holds CURRENT's value.
                assert_eq!(Some(self.target.clone()), self.value(&self.current));
            }
            Plan::End(outcome) => {
                // One transaction: PENDING off the run's version, run ended.
                if self.pending.as_deref() == Some(self.run.id.as_str()) {
                    self.pending = None;
                }
                self.run.phase = Phase::Ended;
                self.run.outcome = Some(outcome);
                self.current_at_end = Some(self.current.clone());
            }
        }
    }

    fn begin_ending(&mut self, outcome: Outcome) {
        self.run.phase = Phase::Ending;
        self.run.outcome = Some(outcome);
        self.run.revert = revert_for(&self.run);
    }

    fn active(&self) -> bool {
        matches!(self.run.phase, Phase::Running | Phase::StepFailed)
    }

    fn apply(&mut self, event: &Event) {
        match event {
            Event::Tick => self.tick(false),
            Event::Crash => self.tick(true),
            Event::Fail => self.fail_next = true,
            Event::Time(millis) => self.now += *millis as i64,
            Event::Approve(who) => {
                if self.active() {
                    self.approvals.push((*who).to_owned());
                }
            }
            Event::Reject => {
                if self.active() {
                    self.begin_ending(Outcome::Rejected);
                }
            }
            Event::Cancel => {
                if self.active() {
                    self.begin_ending(Outcome::Cancelled);
                }
            }
            Event::OperatorStep => {
                if self.run.phase == Phase::Running {
                    self.run.operator_go = true;
                }
            }
            Event::Retry => {
                if self.run.phase == Phase::StepFailed {
                    self.run.phase = Phase::Running;
                    self.run.operator_go = true;
                }
                self.run.next_attempt_at = None;
            }
            Event::Put => {
                self.puts += 1;
                let id = format!("put{}", self.puts);
                self.versions.push((id.clone(), id.clone()));
                self.previous = Some(self.current.clone());
                self.current = id;
            }
        }
    }

    fn check(&self) -> Result<(), TestCaseError> {
        prop_assert!(
            self.value(&self.current).is_some(),
            "CURRENT points at no version"
        );
        if self.run.phase == Phase::Ended {
            prop_assert!(
                self.pending.is_none() || self.pending.as_deref() == Some(self.current.as_str()),
                "ended with PENDING on another version than CURRENT: {:?}",
                self
            );
            let at_end = self.current_at_end.clone().unwrap_or_default();
            if self.run.outcome == Some(Outcome::Succeeded) {
                prop_assert_eq!(&at_end, &self.run.id);
            } else {
                prop_assert_ne!(&at_end, &self.run.id);
            }
        }
        for (step, counted) in &self.gated_executions {
            prop_assert!(
                *counted >= self.gates.required,
                "{} ran with {} approvals of {}",
                step,
                counted,
                self.gates.required
            );
        }
        prop_assert!(
            self.versions
                .iter()
                .filter(|(id, _)| *id == self.run.id)
                .count()
                <= 1
        );
        Ok(())
    }
}

#[derive(Debug, Clone)]
enum Event {
    Tick,
    Crash,
    Fail,
    Time(u16),
    Approve(&'static str),
    Reject,
    Cancel,
    OperatorStep,
    Retry,
    Put,
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        8 => Just(Event::Tick),
        2 => Just(Event::Crash),
        2 => Just(Event::Fail),
        1 => (0u16..20_000).prop_map(Event::Time),
        2 => prop_oneof![Just("alice"), Just("bob"), Just("carol")].prop_map(Event::Approve),
        1 => Just(Event::Reject),
        1 => Just(Event::Cancel),
        3 => Just(Event::OperatorStep),
        1 => Just(Event::Retry),
        1 => Just(Event::Put),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn runs_keep_every_invariant(
        events in proptest::collection::vec(event(), 1..80),
        gated in proptest::sample::subsequence(Step::ALL.to_vec(), 0..=4),
        required in 1u32..3,
        manual in any::<bool>(),
    ) {
        let mut world = World::new(gated, required, manual);
        for event in &events {
            world.apply(event);
            world.check()?;
        }
        // Left alone (ticks, time, operator steps), every run ends.
        for _ in 0..200 {
            if world.run.phase == Phase::Ended {
                break;
            }
            world.apply(&Event::Time(20_000));
            world.apply(&Event::OperatorStep);
            world.apply(&Event::Retry);
            world.apply(&Event::Tick);
            world.check()?;
        }
        prop_assert_eq!(world.run.phase, Phase::Ended, "{:?}", world);
    }
}
