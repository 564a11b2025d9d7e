//! The store backends every behaviour is held to, and [`on_every_backend!`](crate::on_every_backend),
//! which makes one test per scenario and backend.

/// A store backend of the registry, as the suites start it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The in-process memory store.
    Memory,
    /// A private `redis-server`.
    Redis,
    /// A private 3-master Redis Cluster (a patient's keys on one master, the rest spread).
    RedisCluster,
}

/// Runs each scenario on every backend: for `on_every_backend!(run; [a::b::scenario, ...])` it
/// makes the modules `memory`, `redis` and `redis_cluster`, each with one
/// `#[tokio::test(flavor = "multi_thread", worker_threads = 2)]` per scenario, named after the
/// scenario (`memory::scenario`), whose body is `run(Backend::Memory, a::b::scenario).await`.
///
/// `run` and the scenario paths are resolved in the module that invokes the macro. `run` decides
/// what a scenario gets: a server on the backend (`tests/api.rs`), or the backend itself for a
/// scenario that starts its own environment (`tests/audit`). So one list of scenarios names every
/// test, and no backend can be left out of one of them.
#[macro_export]
macro_rules! on_every_backend {
    ($run:ident; [$($($segment:ident)::+),+ $(,)?]) => {
        $crate::on_every_backend!(@module memory Memory $run; $([$($segment)::+])+);
        $crate::on_every_backend!(@module redis Redis $run; $([$($segment)::+])+);
        $crate::on_every_backend!(@module redis_cluster RedisCluster $run; $([$($segment)::+])+);
    };
    (@module $module:ident $backend:ident $run:ident; $([$($path:tt)+])+) => {
        mod $module {
            $($crate::on_every_backend!(@test $backend $run [$($path)+] $($path)+);)+
        }
    };
    // The test is named after the last segment of the scenario's path: drop tokens until one is left.
    (@test $backend:ident $run:ident [$($path:tt)+] $name:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            super::$run($crate::Backend::$backend, super::$($path)+).await;
        }
    };
    (@test $backend:ident $run:ident [$($path:tt)+] $first:tt $($rest:tt)+) => {
        $crate::on_every_backend!(@test $backend $run [$($path)+] $($rest)+);
    };
}
