//! The session as an admin console (`State::Admin`): after authentication it talks to no
//! node; each simple Query is an admin command answered by `crate::admin`.

use super::{Session, Transition};
use crate::net::endpoint::Broken;
use crate::protocol::backend;
use crate::protocol::framing::message_header;
use crate::protocol::frontend;
use crate::reactor::context::Context;

impl Session {
    /// Entering the console: what a PostgreSQL login ends with.
    pub(super) fn open_admin(&mut self, cx: &mut Context) -> Transition {
        cx.cancel(&mut self.auth_timer);
        let out = &mut cx.shared.out;
        out.clear();
        for (name, value) in [
            ("server_version", "15.0 (pgmulti admin console)"),
            ("server_encoding", "UTF8"),
            ("client_encoding", "UTF8"),
            ("DateStyle", "ISO, MDY"),
            ("integer_datetimes", "on"),
            ("standard_conforming_strings", "on"),
        ] {
            backend::parameter_status(out, name, value);
        }
        backend::backend_key_data(out, 0, 0);
        backend::ready_for_query(out, b'I');
        self.send_to_client(cx);
        Transition::Stay
    }

    pub(super) fn on_admin(&mut self, cx: &mut Context) -> Transition {
        match self.client.fill() {
            Ok(_) => {}
            Err(Broken::Closed) => return Transition::Close("client closed the connection".into()),
            Err(Broken::Error(e)) => return Transition::Close(format!("client read error: {e}")),
        }
        loop {
            if self.admin_waiting {
                return Transition::Stay;
            }
            let data = self.client.rx.data();
            let (tag, len) = match message_header(data, self.client.rx.capacity()) {
                Ok(Some(h)) if data.len() >= h.1 => h,
                Ok(_) => return Transition::Stay,
                Err(e) => return self.protocol_violation(cx, &e.to_string()),
            };
            let msg = data[..len].to_vec();
            self.client.rx.consume(len);
            let mut answer = Vec::new();
            match tag {
                b'Q' => match frontend::parse_query(&msg[5..]) {
                    Ok(sql) => {
                        log::info!("{} admin: {}", self.prefix, sql.trim());
                        if let Some(ask) = crate::admin::execute(sql, cx.shared, &mut answer) {
                            // The loop carries it out and answers through `admin_answer`.
                            cx.shared.admin_asks.long.push((cx.key, ask));
                            self.admin_waiting = true;
                            continue;
                        }
                    }
                    Err(e) => return self.protocol_violation(cx, &e.to_string()),
                },
                b'X' => return Transition::Close("client sent Terminate".into()),
                _ => backend::error_response(
                    &mut answer,
                    "ERROR",
                    "0A000",
                    "the admin console speaks the simple query protocol only",
                    None,
                    None,
                ),
            }
            if tag == b'Q' || tag == b'S' {
                backend::ready_for_query(&mut answer, b'I');
            }
            cx.shared.out.clear();
            cx.shared.out.extend_from_slice(&answer);
            self.send_to_client(cx);
        }
    }

    /// The loop finished a command this console was waiting for: `answer` (a result or an
    /// error) and ReadyForQuery go out, and the next command is read.
    pub fn admin_answer(&mut self, answer: &[u8], cx: &mut Context) {
        if !self.admin_waiting {
            return;
        }
        self.admin_waiting = false;
        let out = &mut cx.shared.out;
        out.clear();
        out.extend_from_slice(answer);
        backend::ready_for_query(out, b'I');
        self.send_to_client(cx);
        cx.again = true;
    }
}
