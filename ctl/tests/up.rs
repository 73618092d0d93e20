//! `sluicectl up` as far as it can be exercised without the real daemons: binary discovery
//! errors, a daemon that dies at start, and a full start/stop cycle with stand-in daemons
//! (shell scripts) and a fake admin API.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A private copy of sluicectl in `dir`, so "next to the executable" is a directory we control.
fn isolated_ctl(dir: &Path) -> PathBuf {
    let bin = dir.join("sluicectl");
    std::fs::copy(BIN, &bin).unwrap();
    bin
}

/// Spawn, retrying while another test thread's fork still holds a just-written executable
/// open (ETXTBSY).
fn spawn(cmd: &mut Command) -> std::process::Child {
    for _ in 0..50 {
        match cmd.spawn() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                std::thread::sleep(Duration::from_millis(20))
            }
            r => return r.expect("spawn sluicectl"),
        }
    }
    panic!("executable stayed busy");
}

fn output(cmd: &mut Command) -> std::process::Output {
    spawn(cmd).wait_with_output().unwrap()
}

fn script(dir: &Path, name: &str, body: &str) {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn up_cmd(bin: &Path, runtime: &Path) -> Command {
    let mut c = Command::new(bin);
    c.args(["up", "--timeout", "10"])
        .env("SLUICE_RUNTIME_DIR", runtime)
        .env("XDG_RUNTIME_DIR", runtime)
        .env("PATH", "/nonexistent-sluice-path")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

#[test]
fn missing_binary_is_reported() {
    let dir = temp_dir("up-missing");
    let bin = isolated_ctl(&dir);
    let o = output(&mut up_cmd(&bin, &dir));
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("cannot find sluice-control"), "{err}");
    assert!(err.contains("not on PATH"), "{err}");
    assert!(err.contains(&dir.display().to_string()), "{err}");

    script(&dir, "sluice-control", "exit 0");
    let o = output(&mut up_cmd(&bin, &dir));
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("cannot find sluice-relay"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn missing_config_file_is_usage() {
    let dir = temp_dir("up-config");
    let bin = isolated_ctl(&dir);
    let o = output(up_cmd(&bin, &dir).args(["--config", "/nonexistent/sluice.toml"]));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--config"), "{}", stderr(&o));

    // A bad key is reported (with its name) before anything starts.
    let cfg = dir.join("bad.toml");
    std::fs::write(&cfg, "[relay]\nno_such_key = 1\n").unwrap();
    let o = output(up_cmd(&bin, &dir).arg("--config").arg(&cfg));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("no_such_key"), "{}", stderr(&o));
}

#[test]
fn control_dying_at_start_shows_its_stderr() {
    let dir = temp_dir("up-dies");
    let bin = isolated_ctl(&dir);
    script(
        &dir,
        "sluice-control",
        "echo 'config: unknown key foo' >&2; exit 3",
    );
    script(&dir, "sluice-relay", "sleep 30");
    let o = output(&mut up_cmd(&bin, &dir));
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("sluice-control exited before it was ready (exit code 3)"),
        "{err}"
    );
    assert!(err.contains("config: unknown key foo"), "{err}");
}

/// A fake admin API whose status reports the relay up.
fn fake_up_control() -> FakeControl {
    FakeControl::start(|s| {
        match s.path.as_str() {
        "/v1/status" => (
            200,
            r#"{"media_addr":"127.0.0.1:3478","admin_url":"ADMIN","public_url":"http://127.0.0.1:8080","metrics_url":"http://127.0.0.1:8080/metrics","relay":{"up":true}}"#.into(),
        ),
        _ => (404, r#"{"error":"nope"}"#.into()),
    }
    })
}

/// Stand-in daemons in `dir`: control records its arguments in `dir/control.args`, writes its
/// runtime file into `runtime` (with its own pid) and waits for SIGTERM; the relay prints a
/// start line on stdout, as the real one does, and waits too.
fn stand_ins(dir: &Path, runtime: &Path, admin_url: &str) {
    script(
        dir,
        "sluice-control",
        &format!(
            r#"echo "$@" > '{}/control.args'
printf '{{"admin_url":"{}","admin_token":"t","media_addr":"127.0.0.1:3478","public_url":"http://127.0.0.1:8080","metrics_url":"http://127.0.0.1:8080/metrics","pid":%d,"shm_path":"/dev/shm/x"}}' $$ > '{}/control.json'
echo control-started >&2
trap 'echo control-stopping >&2; exit 0' TERM
while :; do sleep 0.05; done"#,
            dir.display(),
            admin_url,
            runtime.display()
        ),
    );
    script(
        dir,
        "sluice-relay",
        &format!(
            "echo $$ > '{}/relay.pid'\necho relay-start-line-on-stdout\ntrap 'exit 0' TERM\nwhile :; do sleep 0.05; done",
            dir.display()
        ),
    );
}

/// Run `up` with the stand-ins until it has polled status, then SIGTERM it. Returns its exit
/// code, stdout and stderr.
fn up_until_ready(mut cmd: Command, fake: &FakeControl) -> (Option<i32>, String, String) {
    let mut child = spawn(cmd.env("PATH", "/usr/bin:/bin"));
    // Wait for the endpoints on stdout.
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut s).unwrap();
        s
    });
    let start = Instant::now();
    loop {
        let reqs = fake.requests();
        if reqs.iter().any(|r| r.path == "/v1/status") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "up never polled status"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(child.try_wait().unwrap().is_none(), "up exited early");
    let pid = rustix::process::Pid::from_child(&child);
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let status = child.wait().unwrap();
    let out = reader.join().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    (status.code(), out, err)
}

#[test]
fn full_cycle_with_stand_in_daemons() {
    let fake = fake_up_control();
    let dir = temp_dir("up-full");
    let bin = isolated_ctl(&dir);
    let runtime = dir.join("run");
    std::fs::create_dir_all(&runtime).unwrap();
    stand_ins(&dir, &runtime, &fake.url);
    let (code, out, err) = up_until_ready(up_cmd(&bin, &runtime), &fake);
    assert_eq!(code, Some(0), "stdout: {out}\nstderr: {err}");
    assert!(out.contains("media_addr   127.0.0.1:3478"), "{out}");
    assert!(
        out.contains("metrics_url  http://127.0.0.1:8080/metrics"),
        "{out}"
    );
    assert!(err.contains("[sluice-control] control-started"), "{err}");
    assert!(err.contains("[sluice-control] control-stopping"), "{err}");
    let auth = &fake.requests()[0].auth;
    assert_eq!(auth.as_deref(), Some("Bearer t"));
}

#[test]
fn json_stdout_is_one_object_and_ephemeral_state_is_removed() {
    let fake = fake_up_control();
    let dir = temp_dir("up-ephemeral");
    let bin = isolated_ctl(&dir);
    let runtime = dir.join("run");
    std::fs::create_dir_all(&runtime).unwrap();
    stand_ins(&dir, &runtime, &fake.url);
    let mut cmd = up_cmd(&bin, &runtime);
    cmd.args(["--json", "--ephemeral"]);
    let (code, out, err) = up_until_ready(cmd, &fake);
    assert_eq!(code, Some(0), "stdout: {out}\nstderr: {err}");
    // The relay's own stdout line went to stderr; stdout is exactly one JSON object.
    let v: serde_json::Value = serde_json::from_str(&out).expect(&out);
    assert_eq!(v["media_addr"], "127.0.0.1:3478");
    assert!(err.contains("relay-start-line-on-stdout"), "{err}");
    // Control got a scratch configuration whose state lives in a directory that is gone now.
    let args = std::fs::read_to_string(dir.join("control.args")).unwrap();
    let config = args
        .trim()
        .strip_prefix("--config ")
        .unwrap_or_else(|| panic!("control args: {args}"));
    let scratch = Path::new(config).parent().unwrap();
    assert!(
        scratch
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("sluice-ephemeral-"),
        "{config}"
    );
    assert!(!scratch.exists(), "{} left behind", scratch.display());

    // --ephemeral and --config exclude each other.
    let cfg = dir.join("x.toml");
    std::fs::write(&cfg, "").unwrap();
    let o = output(
        up_cmd(&bin, &runtime)
            .arg("--ephemeral")
            .arg("--config")
            .arg(&cfg),
    );
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn up_gives_up_on_a_control_that_keeps_exiting() {
    let fake = fake_up_control();
    let dir = temp_dir("up-giveup");
    let bin = isolated_ctl(&dir);
    let runtime = dir.join("run");
    std::fs::create_dir_all(&runtime).unwrap();
    stand_ins(&dir, &runtime, &fake.url);
    // Control lives 200 ms per start, then fails.
    script(
        &dir,
        "sluice-control",
        &format!(
            r#"printf '{{"admin_url":"{}","admin_token":"t","media_addr":"127.0.0.1:3478","public_url":"http://127.0.0.1:8080","metrics_url":"http://127.0.0.1:8080/metrics","pid":%d,"shm_path":"/dev/shm/x"}}' $$ > '{}/control.json'
echo control-started >&2
sleep 0.2
echo control-failing >&2
exit 3"#,
            fake.url,
            runtime.display()
        ),
    );
    let started = Instant::now();
    let o = output(up_cmd(&bin, &runtime).env("PATH", "/usr/bin:/bin"));
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    for n in 1..=5 {
        assert!(
            err.contains("(exit code 3); restarting it in")
                && err.contains(&format!("(restart {n})")),
            "restart {n} missing: {err}"
        );
    }
    assert!(err.contains("restarting it in 250 ms (restart 1)"), "{err}");
    assert!(
        err.contains("restarting it in 4000 ms (restart 5)"),
        "{err}"
    );
    assert!(
        err.contains("sluice-control exited unexpectedly (exit code 3) after 5 restarts within 60 s; giving up"),
        "{err}"
    );
    assert!(
        err.contains("control-failing"),
        "the stderr tail is shown: {err}"
    );
    // Backoff: 0.25 + 0.5 + 1 + 2 + 4 s between the six starts.
    assert!(
        started.elapsed() >= Duration::from_millis(7_750),
        "{:?}",
        started.elapsed()
    );
    // The stand-in relay was stopped too, and up.json removed.
    let relay: u32 = std::fs::read_to_string(dir.join("relay.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        !Path::new(&format!("/proc/{relay}")).exists(),
        "the relay (pid {relay}) was left running"
    );
    assert!(!runtime.join("up.json").exists());
}
