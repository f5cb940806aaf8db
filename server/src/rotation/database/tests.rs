use super::*;

/// An error about a malformed credential value never quotes it.
#[test]
fn malformed_credentials_are_described_not_quoted() {
    let cases = [
        (
            r#"{"host":"h","username":"u","password":918273}"#,
            "not of its type",
        ),
        (
            r#"{"host":"h","username":"u","password":"918273"#,
            "ends early",
        ),
        (
            r#"{"host":"h","username":"u","password":"918273",}"#,
            "not valid JSON",
        ),
        (r#"{"host":"h","username":"u"}"#, "missing field `password`"),
    ];
    for (text, says) in cases {
        let value = SecretValue::text(text);
        let Err(RotatorError(message)) = Credentials::parse(Some(&value), "the value") else {
            panic!("{text} parsed");
        };
        assert!(message.contains(says), "{text}: {message}");
        assert!(!message.contains("918273"), "{message}");
    }
}

/// A rotator of `strategy`, alternating users pinned to `user` at
/// `place`, with an admin at `h:5432` over verified TLS.
fn rotator(strategy: Strategy, user: &str, place: &str) -> DatabaseRotator {
    DatabaseRotator {
        dialect: Dialect::Postgres,
        strategy,
        policy: PasswordPolicy::default(),
        user: user.to_owned(),
        place: place.to_owned(),
        admin: Some(SecretValue::text(
            r#"{"host":"h","username":"admin","password":"a"}"#,
        )),
        session: Session {
            limit: Duration::from_secs(1),
            ca_file: None,
        },
    }
}

fn input<'a>(
    step: Step,
    current: &'a SecretValue,
    previous: Option<&'a SecretValue>,
) -> StepInput<'a> {
    StepInput {
        step,
        revert: false,
        secret_name: "db/app",
        secret_id: "db/app-1",
        token: "t",
        current: Some(current),
        pending: None,
        previous,
        replacing: None,
    }
}

/// Alternating users, as configured for `pinned`: createSecret from a
/// CURRENT value naming `user`.
async fn create_alternating(pinned: &str, user: &str) -> Result<StepOutput, RotatorError> {
    let value = SecretValue::text(format!(
        r#"{{"host":"h","username":"{user}","password":"p"}}"#
    ));
    rotator(Strategy::Alternating, pinned, "h:5432 (verified TLS)")
        .run(&input(Step::Create, &value, None))
        .await
}

/// Whoever may write a value may point it at any place, and start a
/// rotation: a single user's older passwords are tried only where
/// their own values sent them, never at the place a newer value names
/// (the database's real password, PREVIOUS once the new value is put,
/// would go to a listener of the writer's, TLS off).
#[test]
fn older_passwords_go_only_where_their_values_sent_them() {
    let value = |host: &str, password: &str, ssl: &str| {
        SecretValue::text(format!(
            r#"{{"host":"{host}","username":"app","password":"{password}"{ssl}}}"#
        ))
    };
    let real = value("db", "real-password", "");
    let single = rotator(Strategy::Single, "", "");
    let target = |value: &SecretValue| {
        let mut target = Credentials::parse(Some(value), "v").unwrap();
        target.password = "new".to_owned();
        target
    };
    for elsewhere in [
        value("evil", "x", ""),
        value("db", "x", r#","ssl":false"#),
        value("db", "x", r#","port":5433"#),
    ] {
        let logins = single.older_logins(
            &input(Step::Set, &elsewhere, Some(&real)),
            &target(&elsewhere),
        );
        let passwords: Vec<&str> = logins
            .iter()
            .map(|(_, login)| login.password.as_str())
            .collect();
        assert_eq!(passwords, ["x"], "{:?}", logins.first());
    }
    // Where the value before sent it, it is tried, whatever the case of
    // the host's name.
    let moved_password = value("DB", "x", "");
    let logins = single.older_logins(
        &input(Step::Set, &moved_password, Some(&real)),
        &target(&moved_password),
    );
    let passwords: Vec<&str> = logins
        .iter()
        .map(|(_, login)| login.password.as_str())
        .collect();
    assert_eq!(passwords, ["x", "real-password"]);
}

/// Alternating users send the user's new password only to the place
/// pinned at configuration (or, pinned before places were, the
/// admin's): the admin installs it on the real database, and a value
/// naming another place would have testSecret log in there with it.
#[tokio::test]
async fn alternating_users_send_passwords_only_to_the_pinned_place() {
    let at = |host: &str, ssl: &str| {
        SecretValue::text(format!(
            r#"{{"host":"{host}","username":"app","password":"p"{ssl}}}"#
        ))
    };
    for pin in ["db:5432 (verified TLS)", ""] {
        let host = if pin.is_empty() { "h" } else { "db" };
        let rotator = rotator(Strategy::Alternating, "app", pin);
        rotator
            .run(&input(Step::Create, &at(host, ""), None))
            .await
            .unwrap();
        for elsewhere in [
            at("evil", ""),
            at(host, r#","ssl":false"#),
            at(host, r#","port":1"#),
        ] {
            let Err(RotatorError(message)) =
                rotator.run(&input(Step::Create, &elsewhere, None)).await
            else {
                panic!("a value naming another place was acted on");
            };
            assert!(
                message.contains("but this rotation sends it only to"),
                "{message}"
            );
            // testSecret refuses it too, before it logs in anywhere.
            let mut test = input(Step::Test, &elsewhere, None);
            test.pending = Some(&elsewhere);
            let Err(RotatorError(message)) = rotator.run(&test).await else {
                panic!("testSecret logged in at another place");
            };
            assert!(
                message.contains("but this rotation sends it only to"),
                "{message}"
            );
        }
    }
}

/// A PostgreSQL user whose clone's name would pass 63 characters is
/// refused at createSecret, before anything changes: PostgreSQL would
/// cut the clone's name short and not find it by its whole name again.
#[tokio::test]
async fn a_clone_name_the_database_would_cut_short_is_refused() {
    let (fits, too_long) = ("u".repeat(57), "u".repeat(58));
    create_alternating(&fits, &fits).await.unwrap();
    let Err(RotatorError(message)) = create_alternating(&too_long, &too_long).await else {
        panic!("a 64-character clone was accepted");
    };
    assert!(
        message.contains("would be 64 characters, and the database allows 63")
            && message.contains("at most 57"),
        "{message}"
    );
    // The clone's own CURRENT goes back to the base name: accepted.
    create_alternating(&fits, &format!("{fits}_clone"))
        .await
        .unwrap();
}

/// Alternating users act only on the user pinned at configuration and
/// its clone, whatever user a value written since names: a writer of
/// the secret named `postgres_clone` to have the superuser's password
/// reset and handed to them, or `postgres` to get a clone in its role.
#[tokio::test]
async fn alternating_users_act_only_on_the_pinned_user() {
    for user in ["app", "app_clone"] {
        create_alternating("app", user).await.unwrap();
    }
    for user in ["postgres", "postgres_clone", "app_clone_clone", "ap"] {
        let Err(RotatorError(message)) = create_alternating("app", user).await else {
            panic!("a value naming {user} was acted on");
        };
        assert!(
            message.starts_with(&format!(
                "the value names database user {user}, but this rotation switches app and app_clone"
            )),
            "{message}"
        );
    }
    let Err(RotatorError(message)) = create_alternating("", "app").await else {
        panic!("a configuration without a pinned user was acted on");
    };
    assert!(message.contains("configure it again"), "{message}");
    assert_eq!(
        pinned(
            Some(&SecretValue::text(
                r#"{"host":"H","username":"app_clone","password":"p"}"#
            )),
            Dialect::Postgres
        )
        .unwrap(),
        ("app".to_owned(), "h:5432 (verified TLS)".to_owned())
    );
}
