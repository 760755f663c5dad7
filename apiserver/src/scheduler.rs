//! Placeholder until written.

use crate::client::Client;
use crate::controllers::Caches;

pub async fn run(_client: Client, _caches: Caches) {}
