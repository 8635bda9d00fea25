//! Shell completions (clap_complete) and man pages (clap_mangen), both
//! generated from the one command definition, so they cannot drift from
//! `--help`. The package installs them (`cargo xtask package` runs the
//! built binary); a unit test generates both.
use std::{
    io::{self, Write},
    path::Path,
};

use clap::CommandFactory;

use super::Cli;

/// The shells `portcullis completions` writes scripts for.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub(crate) enum Shell {
    Bash,
    Zsh,
    Fish,
}

/// Writes the completion script for `shell`.
pub(crate) fn completions(shell: Shell, out: &mut dyn Write) {
    let shell = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(shell, &mut Cli::command(), "portcullis", out);
}

/// Writes `portcullis.1` and `portcullis-SUBCOMMAND.1` (nested ones too)
/// into `dir`; returns the files written.
pub(crate) fn man_pages(dir: &Path) -> io::Result<Vec<std::path::PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut cmd = Cli::command();
    cmd.build();
    let mut written = Vec::new();
    let mut stack = vec![("portcullis".to_string(), cmd)];
    while let Some((name, c)) = stack.pop() {
        if c.is_hide_set() {
            continue;
        }
        for sub in c.get_subcommands() {
            if sub.get_name() != "help" {
                stack.push((format!("{name}-{}", sub.get_name()), sub.clone()));
            }
        }
        let mut text = Vec::new();
        clap_mangen::Man::new(c.clone())
            .title(name.clone())
            .render(&mut text)?;
        let path = dir.join(format!("{name}.1"));
        std::fs::write(&path, text)?;
        written.push(path);
    }
    written.sort();
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_name_every_subcommand_in_each_shell() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let mut out = Vec::new();
            completions(shell, &mut out);
            let text = String::from_utf8(out).unwrap();
            for sub in [
                "grant",
                "revoke",
                "request",
                "approve",
                "explain",
                "audit",
                "completions",
            ] {
                assert!(text.contains(sub), "{shell:?} lacks {sub}");
            }
            assert!(text.contains("ttl"), "{shell:?}");
        }
    }

    #[test]
    fn man_pages_cover_the_command_and_each_subcommand_with_examples() {
        let dir = tempfile::tempdir().unwrap();
        let pages = man_pages(dir.path()).unwrap();
        let names: Vec<String> = pages
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        for page in [
            "portcullis.1",
            "portcullis-grant.1",
            "portcullis-audit-verify.1",
        ] {
            assert!(names.contains(&page.to_string()), "{names:?}");
        }
        assert!(
            !names
                .iter()
                .any(|n| n.contains("man") || n.contains("help")),
            "{names:?}"
        );
        let grant = std::fs::read_to_string(dir.path().join("portcullis-grant.1")).unwrap();
        assert!(grant.starts_with(".ie \\n(.g .ds Aq"), "{}", &grant[..80]);
        assert!(grant.contains("INC\\-4411"), "the examples are in the page");
    }
}
