//! Every key the help overlay shows, per view, in one place.

use super::app::View;

pub const GLOBAL_KEYS: &[(&str, &str)] = &[
    ("↑↓ j k", "move"),
    ("PgUp PgDn g G", "page, top, bottom"),
    ("Enter l", "open"),
    ("Esc q h", "back (quit at the top)"),
    (":", "go to a view: secrets approvals audit run"),
    ("r", "refresh"),
    ("?", "this help"),
    ("Ctrl-C", "quit"),
];

pub fn keys(view: View) -> &'static [(&'static str, &'static str)] {
    match view {
        View::Secrets => &[
            (
                "/",
                "filter as you type (prefix of name, description, tags)",
            ),
            ("s", "sort: name, created, changed"),
            ("R / M", "rotate the selected secret: automatic / manual"),
            ("D", "force delete (asks first)"),
        ],
        View::Detail => &[
            ("v", "reveal the value for a few seconds (asks first)"),
            ("c", "copy the value to the clipboard, OSC 52 (asks first)"),
            ("d", "show or hide deprecated versions"),
            ("Enter", "the rotation run"),
            ("R / M", "rotate: automatic / manual"),
            ("D", "force delete (asks first)"),
        ],
        View::Run => &[
            ("R / M", "start a rotation: automatic / manual"),
            ("n", "run the next step (manual)"),
            ("a", "approve the waiting step, with a comment"),
            ("x", "reject it, with a comment (asks first)"),
            ("t", "retry a failed step"),
            ("C", "cancel the run (asks first)"),
        ],
        View::Approvals => &[
            ("Enter", "open the run"),
            ("a", "approve, with a comment"),
            ("x", "reject, with a comment (asks first)"),
        ],
        View::Audit => &[("/", "filter: p:PRINCIPAL, or a resource prefix")],
    }
}

/// The hint line of a view's footer.
pub fn hint(view: View) -> &'static str {
    match view {
        View::Secrets => "Enter open  / filter  s sort  R rotate  M manual  : views  ? help",
        View::Detail => "v reveal  c copy  d deprecated  Enter run  R rotate  ? help",
        View::Run => "n step  a approve  x reject  t retry  C cancel  M manual  ? help",
        View::Approvals => "Enter open  a approve  x reject  ? help",
        View::Audit => "/ filter  r refresh  ? help",
    }
}
