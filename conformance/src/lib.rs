//! conformance: one set of etcd v3 cases, run against real etcd (the
//! oracle) and against k3rs, so every behaviour k3rs claims is checked
//! against etcd itself.
//!
//! Module map:
//! - `target`: the servers: [`EtcdTarget`] (real etcd from its binary),
//!   [`K3rsTarget`] (k3rs in-process) and [`EndpointTarget`] (any URL).
//! - `client`: tonic clients from `kine::proto`, one per etcd service.
//! - `case`: [`Ctx`] (clients, a key prefix per case, checks), [`Failure`],
//!   etcd's error table and request builders.
//! - `cases`: the cases, one module per group: `kv`, `txn`, `compaction`,
//!   `kubernetes`, `watch`, `lease`, `maintenance`, and the black-box
//!   `etcdctl` and `python` groups.
//! - `diff`: the etcdctl differential: one script against two fresh
//!   servers, outputs compared after masking.
//! - `linearizability`: recorded random traffic checked against a
//!   one-revision etcd model (Wing–Gong–Lowe), watch validators, kill -9
//!   faults.
//! - `run`: runs a case against a target; used by the `conformance` binary
//!   and by `tests/conformance.rs`.
//!
//! Each case is written once as `async fn(Ctx) -> CaseResult`.
//! [`for_each_case!`] is the single list of cases: the registry
//! ([`all`]) and the per-target test functions are both expanded from it.
//! Cases compare revisions relative to one read at their start, so they can
//! share a store; cases marked `fresh` get an empty store of their own.

pub mod case;
pub mod cases;
pub mod client;
pub mod diff;
pub mod linearizability;
pub mod run;
pub mod target;

pub use case::{Case, CaseResult, Ctx, Failure, Flags};
pub use target::{EndpointTarget, EtcdTarget, K3rsTarget, Target, TargetKind};

/// Calls `$callback! { group { case [flags], ... } ... }` with every case.
/// Flags: `fresh` (needs an empty store), `k3rs_only` (pins behaviour of
/// current etcd that differs in 3.4.23, the local oracle).
#[macro_export]
macro_rules! for_each_case {
    ($callback:ident) => {
        $callback! {
            kv {
                empty_store_is_revision_1 [fresh],
                put_one_revision_per_write,
                put_prev_kv,
                put_empty_value,
                empty_key_errors,
                put_ignore_flags_errors,
                put_ignore_value,
                version_resets_on_delete,
                delete_nothing_keeps_revision,
                delete_range_one_revision,
                range_end_forms,
                range_from_key [fresh],
                range_limit,
                range_sort,
                range_invalid_sort [k3rs_only],
                range_revision_filters,
                range_keys_only,
                range_count_only,
                range_historic,
                range_future_and_current_revision,
                binary_keys_and_values,
                request_too_large,
                response_headers,
                range_serializable,
                concurrent_writes_get_distinct_revisions,
                large_range_response,
            }
            txn {
                empty_txn,
                read_only_txn_keeps_revision,
                txn_writes_one_revision,
                later_ops_see_earlier_writes,
                compare_targets_and_results,
                compare_missing_key,
                compare_over_range,
                branches,
                nested_txn,
                too_many_ops,
                duplicate_keys,
                txn_range_options,
                txn_put_flags,
                compare_empty_key,
                txn_delete_and_sorted_range,
                concurrent_cas_one_winner,
                txn_range_revisions_are_checked_first,
            }
            compaction {
                compact_then_read,
                compact_errors,
                compact_keeps_current_state,
                compact_and_deletes,
                compact_takes_no_revision,
                physical_compaction_with_nothing_to_delete,
            }
            kubernetes {
                get_object,
                paged_list,
                paged_list_compacted,
                count_and_estimate,
                create,
                guaranteed_update,
                conditional_delete,
                compactor,
                health_probe,
            }
            watch {
                ids_from_zero,
                put_and_delete_events,
                prefix_watch,
                prev_kv,
                start_revision_in_the_past,
                start_revision_zero,
                start_revision_in_the_future,
                filters,
                txn_events_in_one_response,
                cancel,
                cancel_unknown_id,
                explicit_watch_id,
                compacted_start_revision,
                invalid_range,
                empty_key_watches_all [fresh],
                progress_request,
                progress_waits_for_sync [k3rs_only],
                kubernetes_watch,
                events_in_order,
                compaction_at_delete_revision [k3rs_only],
                fragment,
            }
            lease {
                grant,
                grant_explicit_id,
                revoke_deletes_keys,
                revoke_without_keys,
                put_with_lease,
                time_to_live,
                leases,
                keep_alive,
                expiry_deletes_keys_in_one_revision,
                keep_alive_prevents_expiry,
                kubernetes_event_lease,
            }
            maintenance {
                status,
                member_list,
                alarm_list_empty,
                defragment,
                hash_kv,
                header_revisions,
            }
            etcdctl {
                put_and_get,
                get_json,
                get_prefix_options,
                del,
                txn,
                compaction,
                endpoint_status,
                endpoint_health,
                per_endpoint_calls,
                lease,
                member_list,
            }
            python {
                smoke,
            }
        }
    };
}

macro_rules! registry {
    ($( $group:ident { $( $name:ident $([ $($flag:ident),* ])? ),* $(,)? } )*) => {
        /// Every case, in group order.
        pub fn all() -> Vec<Case> {
            vec![ $( $( Case {
                group: stringify!($group),
                name: stringify!($name),
                flags: Flags::NONE $($( .$flag() )*)?,
                run: |cx| Box::pin(cases::$group::$name(cx)),
            }, )* )* ]
        }
    };
}

for_each_case!(registry);

/// The group names, in order.
pub fn groups() -> Vec<&'static str> {
    let mut g: Vec<&'static str> = Vec::new();
    for c in all() {
        if !g.contains(&c.group) {
            g.push(c.group);
        }
    }
    g
}
