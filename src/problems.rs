//! Several problems found in one run, reported together: a user fixes them all before the next try
//! instead of learning them one failed run at a time.

use std::fmt;

/// What stops a command, one self-contained sentence each (naming the node and what to do). Displays
/// as one line (`; `-joined) wherever it is printed as an error; `main` prints it one line per problem.
#[derive(Debug, Default)]
pub struct Problems(pub Vec<String>);

impl Problems {
    /// Adds an error, or each problem of an error that is itself a list.
    pub fn push_error(&mut self, e: anyhow::Error) {
        match e.downcast::<Problems>() {
            Ok(list) => self.0.extend(list.0),
            Err(e) => self.0.push(format!("{e:#}").replace('\n', " ")),
        }
    }

    /// Ok when empty; else this list as the error.
    pub fn into_result(self) -> anyhow::Result<()> {
        match self.0.is_empty() {
            true => Ok(()),
            false => Err(self.into()),
        }
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("; "))
    }
}

impl std::error::Error for Problems {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_flatten_and_display_on_one_line() {
        let mut all = Problems::default();
        all.push_error(anyhow::anyhow!("node a: one\nsplit"));
        all.push_error(Problems(vec!["node b: two".into(), "node b: three".into()]).into());
        assert_eq!(all.0, ["node a: one split", "node b: two", "node b: three"]);
        assert_eq!(
            all.to_string(),
            "node a: one split; node b: two; node b: three"
        );
        assert!(Problems::default().into_result().is_ok());
    }
}
