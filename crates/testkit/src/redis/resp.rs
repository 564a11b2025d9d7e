//! Talking to redis: redis-cli and a minimal RESP client.

use super::*;

pub(super) fn run_cli(port: u16, args: &[&str]) -> Result<String, String> {
    let mut command = Command::new(redis_cli_bin());
    // -e: exit non-zero on an error reply, which redis-cli otherwise prints with exit status 0.
    command.args(["-e", "-h", "127.0.0.1", "-p", &port.to_string()]).args(args);
    let output = run_with_timeout(command, CLI_TIMEOUT)?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    } else {
        Err(format!(
            "`redis-cli -p {port} {}` failed ({}): {}{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim(),
            String::from_utf8_lossy(&output.stdout).trim()
        ))
    }
}

/// Runs `command` to completion, killing it after `timeout`.
pub(super) fn run_with_timeout(mut command: Command, timeout: Duration) -> Result<Output, String> {
    let description = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| format!("spawn {description}: {error}"))?;
    // Drain both pipes on threads so a chatty child cannot block on a full pipe.
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                let (stdout, stderr) = (stdout.join().unwrap_or_default(), stderr.join().unwrap_or_default());
                return Err(format!(
                    "{description} timed out after {timeout:?}; output so far:\n{}\n{}",
                    String::from_utf8_lossy(&stdout),
                    String::from_utf8_lossy(&stderr)
                ));
            }
            Ok(None) => thread::sleep(Duration::from_millis(5)),
            Err(error) => return Err(format!("wait for {description}: {error}")),
        }
    };
    Ok(Output { status, stdout: stdout.join().unwrap_or_default(), stderr: stderr.join().unwrap_or_default() })
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buffer = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut buffer);
        }
        buffer
    })
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Reply {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

/// Just enough RESP2 for readiness probes and cluster administration, so those loops neither
/// spawn a process per poll nor depend on redis-cli's output format.
pub(super) struct RespConnection {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl RespConnection {
    pub(super) fn connect(port: u16, timeout: Duration) -> Result<RespConnection, String> {
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        let stream = TcpStream::connect_timeout(&address, Duration::from_secs(1))
            .map_err(|error| format!("connect to {address}: {error}"))?;
        let setup = |stream: &TcpStream| {
            stream.set_read_timeout(Some(timeout))?;
            stream.set_write_timeout(Some(timeout))?;
            stream.set_nodelay(true)?;
            stream.try_clone()
        };
        let writer = setup(&stream).map_err(|error| format!("configure socket to {address}: {error}"))?;
        Ok(RespConnection { reader: BufReader::new(stream), writer })
    }

    pub(super) fn command<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Result<Reply, String> {
        let mut request = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            let arg = arg.as_ref();
            request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            request.extend_from_slice(arg);
            request.extend_from_slice(b"\r\n");
        }
        self.writer.write_all(&request).map_err(|error| format!("send to redis: {error}"))?;
        read_reply(&mut self.reader)
    }
}

fn read_reply(reader: &mut impl BufRead) -> Result<Reply, String> {
    let mut line = Vec::new();
    reader.read_until(b'\n', &mut line).map_err(|error| format!("read from redis: {error}"))?;
    let Some(line) = line.strip_suffix(b"\r\n") else {
        return Err(format!("connection closed mid-reply (got {:?})", String::from_utf8_lossy(&line)));
    };
    let (&kind, rest) = line.split_first().ok_or("empty RESP line")?;
    let text = String::from_utf8_lossy(rest).into_owned();
    let length = || text.parse::<i64>().map_err(|_| format!("bad RESP length {text:?}"));
    Ok(match kind {
        b'+' => Reply::Simple(text),
        b'-' => Reply::Error(text),
        b':' => Reply::Integer(length()?),
        b'$' => match usize::try_from(length()?) {
            Err(_) => Reply::Bulk(None),
            Ok(len) => {
                let mut data = vec![0; len + 2];
                reader.read_exact(&mut data).map_err(|error| format!("read bulk reply: {error}"))?;
                data.truncate(len);
                Reply::Bulk(Some(data))
            }
        },
        b'*' => match usize::try_from(length()?) {
            Err(_) => Reply::Array(None),
            Ok(count) => Reply::Array(Some((0..count).map(|_| read_reply(reader)).collect::<Result<_, _>>()?)),
        },
        other => return Err(format!("unexpected RESP type byte {:?}", char::from(other))),
    })
}

/// One command on a fresh connection; an error reply becomes `Err`.
pub(super) fn call_ok<A: AsRef<[u8]>>(port: u16, args: &[A]) -> Result<Reply, String> {
    match RespConnection::connect(port, IO_TIMEOUT)?.command(args)? {
        Reply::Error(error) => Err(format!(":{port} replied {error}")),
        reply => Ok(reply),
    }
}

pub(super) fn reply_text(reply: Reply) -> Result<String, String> {
    match reply {
        Reply::Simple(text) => Ok(text),
        Reply::Bulk(Some(bytes)) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
        other => Err(format!("expected text, got {other:?}")),
    }
}

/// `key:value` lines of INFO / CLUSTER INFO.
pub(super) fn parse_info(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| line.trim().split_once(':'))
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect()
}
