//! Which records of a batch are the same edge, so that repeats merge into one record:
//! the rule (`same_edge`) and a seeded hash that narrows the candidates
//! (`edge_fingerprint`).

use std::hash::{BuildHasher as _, Hash, Hasher};

use crate::record::{EdgeDetail, Item, Record, SocketTarget};

/// What makes two edges "the same edge": workload, cgroup (on a node, different services
/// share the host workload), edge type and target. For opens the
/// target includes the flags and whether it succeeded (the fd number does not matter);
/// for connects the result; for execs the argv. Edges whose marks differ — the value read
/// through a shared descriptor table (`files_shared`) or from the caller's memory
/// (`from_caller`), the caller's memory shared (`memory_shared`), the path unresolved,
/// cut short or of an unlinked file — are not merged, so no occurrence loses or gains a
/// mark.
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
        || ea.files_shared != eb.files_shared
        || ea.memory_shared != eb.memory_shared
    {
        return false;
    }
    match (&ea.detail, &eb.detail) {
        (
            EdgeDetail::Exec {
                path: pa,
                syscall: sa,
                result: ra,
                path_resolved: resolved_a,
                from_caller: caller_a,
                ..
            },
            EdgeDetail::Exec {
                path: pb,
                syscall: sb,
                result: rb,
                path_resolved: resolved_b,
                from_caller: caller_b,
                ..
            },
        ) => {
            pa == pb
                && sa == sb
                && ra == rb
                && resolved_a == resolved_b
                && caller_a == caller_b
                && ea.process.image.args == eb.process.image.args
        }
        (
            EdgeDetail::Open {
                path: pa,
                flags: fa,
                result: ra,
                syscall: sa,
                path_resolved: resolved_a,
                path_truncated: truncated_a,
                path_deleted: deleted_a,
                from_caller: caller_a,
                ..
            },
            EdgeDetail::Open {
                path: pb,
                flags: fb,
                result: rb,
                syscall: sb,
                path_resolved: resolved_b,
                path_truncated: truncated_b,
                path_deleted: deleted_b,
                from_caller: caller_b,
                ..
            },
        ) => {
            pa == pb
                && fa == fb
                && sa == sb
                && outcome(*ra) == outcome(*rb)
                && (resolved_a, truncated_a, deleted_a, caller_a)
                    == (resolved_b, truncated_b, deleted_b, caller_b)
        }
        (
            EdgeDetail::Connect {
                address: ta,
                result: ra,
                from_caller: caller_a,
            },
            EdgeDetail::Connect {
                address: tb,
                result: rb,
                from_caller: caller_b,
            },
        ) => ta == tb && ra == rb && caller_a == caller_b,
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
