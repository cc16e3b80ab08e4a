//! stub until the helper delivers
pub struct Target {
    pub id: u8,
    pub host: String,
    pub addr: std::net::SocketAddr,
}
pub struct Login {
    pub user: String,
    pub password: Option<String>,
    pub tls: crate::net::tls::NodeTls,
}
pub struct Line {
    pub database: String,
    pub object: String,
    pub kind: &'static str,
    pub node: u8,
    pub rows: Option<i64>,
    pub checksum: Option<String>,
    pub status: String,
}
pub struct Report {
    pub lines: Vec<Line>,
    pub consistent: bool,
    pub verdict: String,
}
pub fn check(_t: &[Target], _l: &Login, _d: Option<&str>) -> Report {
    Report {
        lines: vec![],
        consistent: true,
        verdict: String::new(),
    }
}
