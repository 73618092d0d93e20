//! Shell completions and man pages come from the CLI definition itself.

mod common;

use common::*;

#[test]
fn bash_completion_parses_and_knows_every_command() {
    let dir = temp_dir("completions");
    let o = run(&["completions", "bash"], &dir);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let script = stdout(&o);
    for word in [
        "status",
        "session",
        "upgrade",
        "--runtime-dir",
        "--ephemeral",
    ] {
        assert!(script.contains(word), "{word} missing from the completion");
    }
    // bash itself accepts it.
    let path = dir.join("sluicectl.bash");
    std::fs::write(&path, &script).unwrap();
    let st = std::process::Command::new("bash")
        .arg("-n")
        .arg(&path)
        .status()
        .unwrap();
    assert!(st.success(), "bash -n refused the completion script");
    for shell in ["zsh", "fish"] {
        let o = run(&["completions", shell], &dir);
        assert_eq!(o.status.code(), Some(0), "{shell}: {}", stderr(&o));
        assert!(stdout(&o).contains("sluicectl"), "{shell}");
    }
    let o = run(&["completions", "tcsh"], &dir);
    assert_eq!(o.status.code(), Some(2), "unknown shell is a usage error");
}

#[test]
fn man_pages_for_every_command() {
    let dir = temp_dir("man");
    let out = dir.join("man1");
    let o = run(&["man", "--out", out.to_str().unwrap()], &dir);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let top = std::fs::read_to_string(out.join("sluicectl.1")).unwrap();
    assert!(
        top.starts_with(".ie") || top.contains(".TH sluicectl"),
        "{top}"
    );
    let status = std::fs::read_to_string(out.join("sluicectl-status.1")).unwrap();
    assert!(
        status.contains("Exits 5 when the relay is down"),
        "{status}"
    );
    for page in [
        "sluicectl-session-add.1",
        "sluicectl-token-mint.1",
        "sluicectl-up.1",
    ] {
        assert!(out.join(page).is_file(), "{page} missing");
    }
}
