//! `grove login` and `grove logout`: the session kept in the CLI's config.

use super::*;

/// `grove login`.
pub fn login(g: &Global, a: &LoginArgs) -> CmdResult {
    let path = config_path();
    let mut config = Config::load(&path)?;
    if a.ca_cert.is_some() {
        config.ca_cert.clone_from(&a.ca_cert);
    }
    let mut api = Api::new(config, g.root.clone(), Some(path.clone()))?;
    let password = match std::env::var("GROVE_PASSWORD") {
        Ok(p) if !a.password_stdin => p,
        _ => read_password(a.password_stdin)?,
    };
    api.login(&a.username, &password, a.organization.as_deref())?;
    eprintln!(
        "logged in to {} as {} (saved in {})",
        api.base(),
        a.username,
        path.display()
    );
    Ok(())
}

fn read_password(from_stdin: bool) -> Result<String, String> {
    use std::io::IsTerminal;
    let stdin = std::io::stdin();
    let tty = !from_stdin && stdin.is_terminal();
    let saved = if tty {
        eprint!("password: ");
        let _ = std::io::stderr().flush();
        echo_off()
    } else {
        None
    };
    let mut line = String::new();
    let r = stdin.read_line(&mut line);
    if let Some(t) = saved {
        let _ =
            nix::sys::termios::tcsetattr(std::io::stdin(), nix::sys::termios::SetArg::TCSANOW, &t);
        eprintln!();
    }
    r.map_err(|e| format!("reading the password: {e}"))?;
    let p = line.trim_end_matches(['\n', '\r']).to_owned();
    if p.is_empty() {
        return Err("no password given".into());
    }
    Ok(p)
}

/// Turn the terminal's echo off; the settings to restore.
fn echo_off() -> Option<nix::sys::termios::Termios> {
    use nix::sys::termios::{LocalFlags, SetArg, tcgetattr, tcsetattr};
    let saved = tcgetattr(std::io::stdin()).ok()?;
    let mut t = saved.clone();
    t.local_flags.remove(LocalFlags::ECHO);
    tcsetattr(std::io::stdin(), SetArg::TCSANOW, &t).ok()?;
    Some(saved)
}

/// `grove logout`.
pub fn logout(g: &Global) -> CmdResult {
    let mut api = api(g)?;
    let refresh = api.config.refresh_token.clone();
    let body = refresh.map(|r| json!({ "refresh_token": r }));
    if let Err(e) = api.call("POST", "/api/auth/logout", body) {
        eprintln!("the root did not revoke the token: {e}");
    }
    let path = config_path();
    let mut c = api.config.clone();
    c.token = None;
    c.refresh_token = None;
    c.save(&path)?;
    eprintln!("logged out");
    Ok(())
}
