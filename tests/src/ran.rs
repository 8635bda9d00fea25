//! One finished CLI run, and the assertions the JIT tests make on it.
use std::process::Output;

use serde_json::Value;

pub struct Ran {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    pub fn of(out: Output) -> Self {
        Self {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}{}", self.stdout, self.stderr))
    }

    #[track_caller]
    pub fn ok(self) -> Self {
        assert_eq!(self.code, Some(0), "{}{}", self.stdout, self.stderr);
        self
    }

    /// Refused by the agent: exit 1 and a message containing `needle`.
    #[track_caller]
    pub fn refused(self, needle: &str) -> Self {
        assert_eq!(
            self.code,
            Some(1),
            "expected a refusal: {}{}",
            self.stdout,
            self.stderr
        );
        assert!(
            self.stderr.contains(needle),
            "expected {needle:?} in {:?}",
            self.stderr
        );
        self
    }

    /// [`Ran::refused`], and the message is one line.
    #[track_caller]
    pub fn refused_one_line(self, needle: &str) -> Self {
        let ran = self.refused(needle);
        assert_eq!(ran.stderr.trim_end().lines().count(), 1, "{:?}", ran.stderr);
        ran
    }
}
