//! Steps: what pgtwin runs on a node, in order. `plan` prints them and `up`/`down` run the same list, so
//! what a user reviews is what runs.

use crate::sql::names::fnv1a64;

#[derive(Clone, PartialEq, Eq, serde::Serialize)]
pub struct Step {
    /// Stable id, e.g. `table "public"."products": capture function`.
    pub id: String,
    /// The SQL that runs.
    #[serde(skip)]
    pub sql: String,
    /// The SQL as shown to people: `sql` with secrets masked.
    #[serde(rename = "sql")]
    pub shown: String,
    /// Steps whose SQL depends on live data (sequence restarts, the installation record) are left out of
    /// the plan hash, so that an unchanged config reads as "up to date".
    #[serde(skip)]
    pub hashed: bool,
    /// What the plan hash reads for this step instead of `shown`, where the SQL also depends on the
    /// tables' current shape (see `hashed_as`).
    #[serde(skip)]
    pub hash_text: Option<String>,
    /// Settings (name, value) set for the step only; see `with_settings`.
    #[serde(skip)]
    pub settings: Vec<(&'static str, String)>,
}

/// Shows what people may see: the masked SQL, and the names of the settings without their values.
impl std::fmt::Debug for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Step")
            .field("id", &self.id)
            .field("shown", &self.shown)
            .field("hashed", &self.hashed)
            .field(
                "settings",
                &self
                    .settings
                    .iter()
                    .map(|(name, _)| *name)
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Step {
    pub fn new(id: impl Into<String>, sql: impl Into<String>) -> Step {
        let sql = sql.into();
        Step {
            id: id.into(),
            shown: sql.clone(),
            sql,
            hashed: true,
            hash_text: None,
            settings: Vec::new(),
        }
    }

    /// Hashed as `text` rather than as its SQL: for a step that also compiles the tables' current
    /// shape, which a migration changes without changing what is installed.
    pub fn hashed_as(mut self, text: String) -> Step {
        self.hash_text = Some(text);
        self
    }

    /// A step whose SQL holds a secret: `shown` is the same SQL with the secret masked.
    pub fn with_secret(id: impl Into<String>, sql: String, shown: String) -> Step {
        Step {
            id: id.into(),
            sql,
            shown,
            hashed: true,
            hash_text: None,
            settings: Vec::new(),
        }
    }

    /// A step whose SQL reads values from transaction-local settings, which `apply` sets (passing the
    /// values as COPY data) just before the step and clears after it: a secret passed this way appears
    /// in no statement text and no bound parameter, so no server log or statement statistics record it.
    pub fn with_settings(
        id: impl Into<String>,
        sql: String,
        shown: String,
        settings: Vec<(&'static str, String)>,
    ) -> Step {
        Step {
            settings,
            ..Step::with_secret(id, sql, shown)
        }
    }

    pub fn unhashed(mut self) -> Step {
        self.hashed = false;
        self
    }
}

/// Hash of the steps that describe the installed objects; recorded by `up` on each node. Over the SQL as
/// shown, secrets masked: the hash is printed, and a fast hash of a password is a password one brute
/// force away. (A changed password is noticed by comparing the user mapping itself.)
pub fn plan_hash(steps: &[Step]) -> String {
    let mut text = String::new();
    for s in steps.iter().filter(|s| s.hashed) {
        text.push_str(s.hash_text.as_ref().unwrap_or(&s.shown));
        text.push('\0');
    }
    format!("{:016x}", fnv1a64(text.as_bytes()))
}

/// Renders steps for people: a comment with each step's id, then its (masked) SQL.
pub fn render(steps: &[Step]) -> String {
    let mut out = String::new();
    for s in steps {
        // An id may hold a quoted identifier, and an identifier may hold a line break: keep the
        // comment on one line, so the printed plan stays safe to feed to psql.
        let id = s.id.replace('\r', "\\r").replace('\n', "\\n");
        out.push_str(&format!("-- {id}\n{};\n\n", s.shown.trim_end()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_holds_no_secret() {
        let step = Step::with_settings(
            "user mapping",
            "SELECT current_setting('x.pw')".into(),
            "-- shown".into(),
            vec![("x.pw", "hunter2".into())],
        );
        let text = format!("{step:?}");
        assert!(text.contains("x.pw") && !text.contains("hunter2"), "{text}");
    }

    #[test]
    fn a_line_break_in_a_step_id_cannot_leave_its_comment() {
        let step = Step::new("table \"a\nDROP TABLE x; --\": inbox", "SELECT 1");
        let text = render(&[step]);
        assert_eq!(
            text,
            "-- table \"a\\nDROP TABLE x; --\": inbox\nSELECT 1;\n\n"
        );
    }
}
