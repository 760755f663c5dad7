//! Every case against real etcd and against k3rs on SQLite, PostgreSQL,
//! MariaDB and a three-member raft cluster, one `#[test]` per case and target (`kv::range_limit::etcd`,
//! `kv::range_limit::k3rs`, `kv::range_limit::k3rs_postgres`,
//! `kv::range_limit::k3rs_mysql`), expanded
//! from the single case list in `conformance::for_each_case!`.
//!
//! Each test starts its own server (cargo-nextest runs each test in its own
//! process anyway); etcd starts in well under a second and is killed when
//! the test ends, even if the test process is killed.

macro_rules! conformance_tests {
    ($( $group:ident { $( $name:ident $([ $($flag:ident),* ])? ),* $(,)? } )*) => {
        $(
            #[allow(non_snake_case)]
            mod $group {
                $(
                    mod $name {
                        #[test]
                        fn etcd() {
                            conformance::run::run_test(stringify!($group), stringify!($name), conformance::TargetKind::Etcd);
                        }
                        #[test]
                        fn k3rs() {
                            conformance::run::run_test(stringify!($group), stringify!($name), conformance::TargetKind::K3rs);
                        }
                        #[test]
                        fn k3rs_postgres() {
                            conformance::run::run_test(stringify!($group), stringify!($name), conformance::TargetKind::K3rsPostgres);
                        }
                        #[test]
                        fn k3rs_mysql() {
                            conformance::run::run_test(stringify!($group), stringify!($name), conformance::TargetKind::K3rsMysql);
                        }
                        #[test]
                        fn k3rs_raft() {
                            conformance::run::run_test(stringify!($group), stringify!($name), conformance::TargetKind::K3rsRaft);
                        }
                    }
                )*
            }
        )*
    };
}

conformance::for_each_case!(conformance_tests);
