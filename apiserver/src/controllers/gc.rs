//! Placeholder until written.

use super::Caches;
use crate::client::Client;

pub async fn run(_client: Client, _caches: Caches) {}
