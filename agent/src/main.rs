//! `portcullis`: the agent (`portcullis agent`) and its command line, in one binary.
fn main() -> std::process::ExitCode {
    portcullis::main()
}
