//! Which records of a batch are the same edge, so that repeats merge into one record:
//! the rule (`same_edge`) and a seeded hash that narrows the candidates
//! (`edge_fingerprint`).

use std::hash::{BuildHasher as _, Hash, Hasher};

use crate::record::{EdgeDetail, Item, Record, SocketTarget};

/// What makes two edges "the same edge": workload, cgroup (on a node, different services
/// share the host workload), edge type and target. For opens the
/// target includes the flags and whether it succeeded (the fd number does not matter);
/// for connects the result; for execs the argv.
pub(super) fn same_edge(a: &Item, b: &Item) -> bool {
    let (
        Record::Edge {
            event: ea,
            attribution: aa,
        },
        Record::Edge {
            event: eb,
            attribution: ab,
        },
    ) = (&a.record, &b.record)
    else {
        return false;
    };
    // A record of held-back repeats only says less than a report (no requested name): it
    // is not merged into one, nor one into it.
    if a.workload != b.workload
        || aa.enrichment != ab.enrichment
        || aa.container_id != ab.container_id
        || ea.repeats_only != eb.repeats_only
        || ea.cgroup_id != eb.cgroup_id
    {
        return false;
    }
    match (&ea.detail, &eb.detail) {
        (
            EdgeDetail::Exec {
                path: pa,
                syscall: sa,
                result: ra,
                ..
            },
            EdgeDetail::Exec {
                path: pb,
                syscall: sb,
                result: rb,
                ..
            },
        ) => pa == pb && sa == sb && ra == rb && ea.process.image.args == eb.process.image.args,
        (
            EdgeDetail::Open {
                path: pa,
                flags: fa,
                result: ra,
                syscall: sa,
                ..
            },
            EdgeDetail::Open {
                path: pb,
                flags: fb,
                result: rb,
                syscall: sb,
                ..
            },
        ) => pa == pb && fa == fb && sa == sb && outcome(*ra) == outcome(*rb),
        (
            EdgeDetail::Connect {
                address: ta,
                result: ra,
                ..
            },
            EdgeDetail::Connect {
                address: tb,
                result: rb,
                ..
            },
        ) => ta == tb && ra == rb,
        _ => false,
    }
}

/// A syscall result without the descriptor number: 0 for success, else -errno.
fn outcome(result: i64) -> i64 {
    result.min(0)
}

/// A hash of what makes two edges the same (`same_edge` decides; equal edges have equal
/// fingerprints). Seeded per batcher, so crafted paths cannot be made to collide at will.
pub(super) fn edge_fingerprint(seed: &foldhash::fast::RandomState, item: &Item) -> Option<u64> {
    let Record::Edge { event, attribution } = &item.record else {
        return None;
    };
    let mut h = seed.build_hasher();
    item.workload.hash(&mut h);
    attribution.container_id.hash(&mut h);
    match &event.detail {
        EdgeDetail::Exec { path, result, .. } => {
            0u8.hash(&mut h);
            path.hash(&mut h);
            result.hash(&mut h);
            event.process.image.args.hash(&mut h);
        }
        EdgeDetail::Open {
            path,
            flags,
            result,
            ..
        } => {
            1u8.hash(&mut h);
            path.hash(&mut h);
            flags.hash(&mut h);
            outcome(*result).hash(&mut h);
        }
        EdgeDetail::Connect {
            address, result, ..
        } => {
            2u8.hash(&mut h);
            match address {
                SocketTarget::Inet { address, port } => (address, port).hash(&mut h),
                SocketTarget::Unix { path } => path.hash(&mut h),
                SocketTarget::Other { family } => family.hash(&mut h),
                SocketTarget::Unspecified | SocketTarget::Unreadable => {}
            }
            result.hash(&mut h);
        }
    }
    Some(h.finish())
}
