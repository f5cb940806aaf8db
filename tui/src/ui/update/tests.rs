//! The update function's rules, one action at a time.

use super::*;
use zeroize::Zeroizing;

fn app_with_rows(count: usize) -> App {
    let mut app = App::new("https://127.0.0.1:8443", "admin", true);
    app.secrets.rows = (0..count)
        .map(|i| SecretRow {
            metadata: proto::SecretMetadata {
                name: format!("s/{i:03}"),
                ..Default::default()
            },
            run: None,
        })
        .collect();
    app
}

#[test]
fn scrolling_fetches_the_next_page_once() {
    let mut app = app_with_rows(30);
    app.secrets.next_page_token = "more".into();
    assert!(update(&mut app, Action::Down).is_empty());
    let effects = update(&mut app, Action::PageDown);
    assert_eq!(effects, [Effect::LoadSecrets { append: true }]);
    assert!(
        update(&mut app, Action::PageDown).is_empty(),
        "one fetch at a time"
    );
}

#[test]
fn irreversible_actions_ask_first() {
    let mut app = app_with_rows(3);
    app.secrets.rows[0].run = Some(proto::RotationRun {
        name: "s/000".into(),
        run_id: "run-listed".into(),
        ..Default::default()
    });
    app.secrets.rows[0].metadata.secret_id = "id-listed".into();
    let asked = || Confirmable::ForceDelete {
        name: "s/000".into(),
        secret_id: "id-listed".into(),
    };
    assert!(update(&mut app, Action::ForceDelete).is_empty());
    assert_eq!(app.mode, Mode::Confirm(asked()));
    assert!(update(&mut app, Action::Confirm(false)).is_empty());
    assert_eq!(app.mode, Mode::Normal);
    update(&mut app, Action::ForceDelete);
    // Deleted and created again under the name before the answer: the
    // request still names the secret asked about (the server refuses it).
    app.secrets.rows[0].metadata.secret_id = "id-after".into();
    assert_eq!(
        update(&mut app, Action::Confirm(true)),
        [Effect::ForceDelete {
            name: "s/000".into(),
            secret_id: "id-listed".into()
        }]
    );
    // A rejection needs a comment, then a confirmation.
    update(&mut app, Action::Reject);
    assert!(update(&mut app, Action::Submit).is_empty());
    assert!(app.message.as_ref().is_some_and(|m| m.error));
    update(&mut app, Action::Reject);
    for c in "no".chars() {
        update(&mut app, Action::Type(c));
    }
    update(&mut app, Action::Submit);
    assert_eq!(
        update(&mut app, Action::Confirm(true)),
        [Effect::Reject {
            name: "s/000".into(),
            seen: RunSeen {
                run_id: "run-listed".into(),
                step: 0,
            },
            comment: "no".into()
        }]
    );
}

#[test]
fn no_approval_goes_out_without_the_run_it_is_for() {
    let mut app = app_with_rows(2);
    for action in [Action::Approve, Action::Reject] {
        assert!(update(&mut app, action).is_empty());
        assert_eq!(app.mode, Mode::Normal);
        assert!(
            app.message
                .as_ref()
                .is_some_and(|m| m.error && m.text.contains("no rotation run of s/000")),
            "{:?}",
            app.message
        );
    }
}

#[test]
fn the_selection_stays_on_its_secret_when_the_list_changes() {
    let mut app = app_with_rows(0);
    let issued = std::cell::Cell::new(0);
    let loaded = |names: &[&str]| Action::SecretsLoaded {
        issued: {
            issued.set(issued.get() + 1);
            issued.get()
        },
        superseded: false,
        rows: names
            .iter()
            .map(|name| SecretRow {
                metadata: proto::SecretMetadata {
                    name: (*name).into(),
                    ..Default::default()
                },
                run: None,
            })
            .collect(),
        next_page_token: String::new(),
        append: false,
        filter: String::new(),
        sort: Default::default(),
    };
    update(&mut app, loaded(&["a", "c", "d"]));
    update(&mut app, Action::Down);
    assert_eq!(app.focused_name().as_deref(), Some("c"));
    // Created above it (a live reload), then deleted below it.
    update(&mut app, loaded(&["a", "b", "c", "d"]));
    assert_eq!(app.focused_name().as_deref(), Some("c"));
    update(&mut app, loaded(&["c", "d"]));
    assert_eq!(app.focused_name().as_deref(), Some("c"));
    assert_eq!(
        update(&mut app, Action::Rotate { manual: false }),
        [Effect::Rotate {
            name: "c".into(),
            manual: false
        }]
    );
}

#[test]
fn an_approval_names_the_run_on_screen() {
    let mut app = app_with_rows(1);
    app.approvals = vec![proto::RotationRun {
        name: "s/000".into(),
        run_id: "run-seen".into(),
        current_step: proto::RotationStep::SetSecret.into(),
        ..Default::default()
    }];
    app.view = View::Approvals;
    update(&mut app, Action::Approve);
    update(&mut app, Action::Type('k'));
    assert_eq!(
        update(&mut app, Action::Submit),
        [Effect::Approve {
            name: "s/000".into(),
            seen: RunSeen {
                run_id: "run-seen".into(),
                step: proto::RotationStep::SetSecret.into(),
            },
            comment: "k".into()
        }]
    );
}

#[test]
fn an_approval_from_the_list_names_the_run_its_row_shows() {
    let mut app = app_with_rows(2);
    app.secrets.rows[1].run = Some(proto::RotationRun {
        name: "s/001".into(),
        run_id: "run-listed".into(),
        current_step: proto::RotationStep::CreateSecret.into(),
        ..Default::default()
    });
    update(&mut app, Action::Down);
    update(&mut app, Action::Approve);
    update(&mut app, Action::Type('k'));
    assert_eq!(
        update(&mut app, Action::Submit),
        [Effect::Approve {
            name: "s/001".into(),
            seen: RunSeen {
                run_id: "run-listed".into(),
                step: proto::RotationStep::CreateSecret.into(),
            },
            comment: "k".into()
        }]
    );
}

#[test]
fn a_late_detail_of_another_secret_is_not_shown() {
    let mut app = app_with_rows(2);
    update(&mut app, Action::Down);
    assert_eq!(
        update(&mut app, Action::Open),
        [Effect::LoadDetail("s/001".into())]
    );
    let detail = |name: &str| {
        Box::new(Detail {
            metadata: proto::SecretMetadata {
                name: name.into(),
                ..Default::default()
            },
            ..Default::default()
        })
    };
    update(&mut app, Action::DetailLoaded(1, detail("s/000")));
    assert!(app.detail.is_none());
    update(&mut app, Action::DetailLoaded(2, detail("s/001")));
    assert_eq!(app.detail.unwrap().metadata.name, "s/001");
}

#[test]
fn the_approvals_selection_stays_on_its_run() {
    let run = |id: &str| proto::RotationRun {
        name: format!("s/{id}"),
        run_id: id.into(),
        ..Default::default()
    };
    let mut app = app_with_rows(0);
    app.view = View::Approvals;
    update(
        &mut app,
        Action::ApprovalsLoaded(1, vec![run("a"), run("b"), run("c")]),
    );
    update(&mut app, Action::Down);
    assert_eq!(app.focused_run().run_id, "b");
    update(
        &mut app,
        Action::ApprovalsLoaded(2, vec![run("b"), run("c")]),
    );
    assert_eq!(app.focused_run().run_id, "b");
}

#[test]
fn filtering_as_you_type_and_views_by_name() {
    let mut app = app_with_rows(3);
    update(&mut app, Action::StartFilter);
    assert_eq!(
        update(&mut app, Action::Type('p')),
        [Effect::LoadSecrets { append: false }]
    );
    assert_eq!(app.secrets.filter, "p");
    update(&mut app, Action::Back);
    assert_eq!(app.secrets.filter, "");
    update(&mut app, Action::StartCommand);
    for c in "audit".chars() {
        update(&mut app, Action::Type(c));
    }
    assert_eq!(update(&mut app, Action::Submit), [Effect::LoadAudit]);
    assert_eq!(app.view, View::Audit);
    update(&mut app, Action::Back);
    assert_eq!(app.view, View::Secrets);
    update(&mut app, Action::Back);
    assert!(app.quit);
}

#[test]
fn answers_to_an_older_filter_are_dropped() {
    let mut app = app_with_rows(0);
    app.secrets.filter = "prod/d".into();
    let issued = std::cell::Cell::new(0);
    let stale = |filter: &str| Action::SecretsLoaded {
        issued: {
            issued.set(issued.get() + 1);
            issued.get()
        },
        superseded: false,
        rows: app_with_rows(2).secrets.rows,
        next_page_token: String::new(),
        append: false,
        filter: filter.into(),
        sort: Default::default(),
    };
    update(&mut app, stale("prod/"));
    assert!(app.secrets.rows.is_empty());
    update(&mut app, stale("prod/d"));
    assert_eq!(app.secrets.rows.len(), 2);
}

/// Loads run side by side: the first list load may answer after the
/// reload the Watch stream's opening (or an event) asked for. The older
/// answer is dropped rather than shown over the newer one (the demo's
/// failed run stayed "ending" on screen).
#[test]
fn an_answer_older_than_the_one_shown_is_dropped() {
    let mut app = app_with_rows(0);
    let state = |issued: u64, state: &str| Action::SecretsLoaded {
        issued,
        superseded: false,
        rows: vec![SecretRow {
            metadata: proto::SecretMetadata {
                name: "demo/app".into(),
                ..Default::default()
            },
            run: Some(proto::RotationRun {
                state: state.into(),
                ..Default::default()
            }),
        }],
        next_page_token: String::new(),
        append: false,
        filter: String::new(),
        sort: Default::default(),
    };
    update(&mut app, state(2, "failed"));
    update(&mut app, state(1, "ending"));
    let shown = |app: &App| app.secrets.rows[0].run.as_ref().unwrap().state.clone();
    assert_eq!(shown(&app), "failed");
    update(&mut app, state(3, "running"));
    assert_eq!(shown(&app), "running");
    // A page added that answers before the reload asked for ahead of it:
    // shown, and the reload after it too.
    let page = |issued: u64, superseded: bool, name: &str| Action::SecretsLoaded {
        issued,
        superseded,
        rows: vec![SecretRow {
            metadata: proto::SecretMetadata {
                name: name.into(),
                ..Default::default()
            },
            run: None,
        }],
        next_page_token: String::new(),
        append: true,
        filter: String::new(),
        sort: Default::default(),
    };
    update(&mut app, page(5, false, "demo/more"));
    assert_eq!(app.secrets.rows.len(), 2);
    update(&mut app, state(4, "succeeded"));
    assert_eq!(app.secrets.rows.len(), 1);
    assert_eq!(shown(&app), "succeeded");
    // A page asked for before a reload asked for since, or older than the
    // reload shown: dropped.
    update(&mut app, page(6, true, "demo/stale"));
    update(&mut app, page(3, false, "demo/older"));
    assert_eq!(app.secrets.rows.len(), 1);
    let runs = |issued, id: &str| {
        Action::ApprovalsLoaded(
            issued,
            vec![proto::RotationRun {
                run_id: id.into(),
                ..Default::default()
            }],
        )
    };
    update(&mut app, runs(5, "new"));
    update(&mut app, runs(4, "old"));
    assert_eq!(app.approvals[0].run_id, "new");
    update(
        &mut app,
        Action::AuditLoaded(2, vec![proto::AuditEvent::default()]),
    );
    update(&mut app, Action::AuditLoaded(1, Vec::new()));
    assert_eq!(app.audit.len(), 1);
}

fn fetched(name: &str) -> Action {
    Action::Revealed(Fetched {
        name: name.into(),
        value: Zeroizing::new("planted-value".into()),
    })
}

fn detail_of(name: &str) -> Option<Detail> {
    let mut detail = Detail::default();
    detail.metadata.name = name.into();
    Some(detail)
}

#[test]
fn a_revealed_value_shows_only_on_its_own_secret() {
    let mut app = app_with_rows(2);
    app.detail = detail_of("a");
    app.view = View::Detail;
    update(&mut app, fetched("b"));
    assert!(app.detail.as_ref().unwrap().revealed.is_none());
    // Back on the list, the detail of a kept for going back to.
    app.view = View::Secrets;
    update(&mut app, fetched("a"));
    assert!(app.detail.as_ref().unwrap().revealed.is_none());
    app.view = View::Detail;
    update(&mut app, fetched("a"));
    assert!(app.detail.as_ref().unwrap().revealed.is_some());
    assert!(!format!("{:?}", fetched("a")).contains("planted-value"));
}

#[test]
fn a_revealed_value_hides_after_its_time() {
    let mut app = app_with_rows(1);
    app.detail = detail_of("a");
    app.view = View::Detail;
    update(&mut app, fetched("a"));
    assert!(app.detail.as_ref().unwrap().revealed.is_some());
    update(
        &mut app,
        Action::Tick(Instant::now() + Duration::from_secs(super::super::app::REVEAL_SECONDS + 1)),
    );
    assert!(app.detail.as_ref().unwrap().revealed.is_none());
}

/// Step, retry and cancel name the run on screen: one that ended and
/// another that began before the key (or the confirmation) is not the one
/// meant, and the server refuses it.
#[test]
fn step_retry_and_cancel_name_the_run_on_screen() {
    let mut app = app_with_rows(1);
    app.secrets.rows[0].run = Some(proto::RotationRun {
        name: "s/000".into(),
        run_id: "run-listed".into(),
        ..Default::default()
    });
    let named = |name: &str| (name.to_owned(), "run-listed".to_owned());
    let (name, run_id) = named("s/000");
    assert_eq!(
        update(&mut app, Action::Step),
        [Effect::Step {
            name: name.clone(),
            run_id: run_id.clone()
        }]
    );
    assert_eq!(
        update(&mut app, Action::Retry),
        [Effect::Retry {
            name: name.clone(),
            run_id: run_id.clone()
        }]
    );
    update(&mut app, Action::Cancel);
    // The run changes under the prompt: the answer still names the one asked about.
    app.secrets.rows[0].run.as_mut().unwrap().run_id = "run-after".into();
    assert_eq!(
        update(&mut app, Action::Confirm(true)),
        [Effect::Cancel { name, run_id }]
    );
}

/// A change arriving while the list is paged past its first page does not
/// reload it (which would bring back the first page and move the cursor):
/// it says so, and `r` reloads; a list of one page reloads by itself.
#[test]
fn a_paged_list_is_not_reloaded_under_the_cursor() {
    let event = || {
        Action::Event(Box::new(proto::WatchEvent {
            name: "s/007".into(),
            ..Default::default()
        }))
    };
    let mut app = app_with_rows(150);
    app.secrets.selected = 140;
    assert!(update(&mut app, event()).is_empty());
    assert_eq!(app.secrets.selected, 140);
    assert!(
        app.message
            .as_ref()
            .is_some_and(|m| m.text.contains("r reloads")),
        "{:?}",
        app.message
    );
    // Nor after an action of the operator's ends.
    assert!(update(&mut app, Action::Done("rotation of s/140 started".into())).is_empty());
    assert_eq!(app.secrets.selected, 140);
    let mut short = app_with_rows(50);
    assert_eq!(
        update(&mut short, event()),
        [Effect::LoadSecrets { append: false }]
    );
}
